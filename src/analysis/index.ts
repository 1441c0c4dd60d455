/**
 * Routing analyses: pure functions over per-expert counts, router logits and
 * top-k ids. See each module for the definitions.
 */
export * from './load';
export * from './window';
export * from './dead';
export * from './collapse';
export * from './router';
export * from './coactivation';
export * from './locality';
export * from './vocabulary';
export * from './thresholds';
export * from './health';
export * from './layers';
export { FINDING_KINDS, findings, fmtInt, type Finding, type FindingKind, type LayerWindow } from './findings';
export * from './visibility';
export * from './ranks';
export * from './flow';
export * from './shift';
export * from './seriation';
export * from './layer-metrics';
export * from './attribution';
export * from './experts';
