export * from './probe';
export * from './panel';
