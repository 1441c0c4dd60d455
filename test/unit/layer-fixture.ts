/** A layer as the probe describes it, for unit tests (src/protocol/probe.ts LayerInfo). */
import type { LayerInfo } from '../../src/protocol/probe';

export function layerInfo(index: number, experts: number, topK: number, more: Partial<LayerInfo> = {}): LayerInfo {
  return {
    index, name: `model.layers.${index}.mlp`, arch: 'moe-block', experts, top_k: topK, model_index: index, stack: 'model.layers',
    kind: 'mlp', design: 'top-k', source: 'dispatched', token_source: 'dispatched', identity_experts: 0, shared_experts: 0, gating: '',
    ...more,
  };
}

/** int64 little-endian bytes of whole numbers. */
export function int64Bytes(values: number[]): Buffer {
  const buf = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => buf.writeBigInt64LE(BigInt(v), i * 8));
  return buf;
}
