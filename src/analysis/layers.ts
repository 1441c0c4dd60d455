/**
 * Naming a layer the way the model does, and saying in words how its routing is read.
 * Pure functions of the probe's LayerInfo, shared by the findings and every view.
 */
import type { LayerInfo } from '../protocol/probe';

/** Words in a stack's path that users tell stacks apart by, in the order they are tried. */
const STACK_WORDS = ['encoder', 'decoder', 'vision', 'visual', 'audio', 'talker', 'thinker', 'mtp'] as const;

/** "encoder", "decoder", "vision", ... when the stack's path says which; "" otherwise ("model.layers"). */
export function stackWord(stack: string): string {
  const parts = stack.toLowerCase().split('.');
  for (const word of STACK_WORDS) if (parts.some((p) => p.includes(word))) return word === 'visual' ? 'vision' : word;
  return '';
}

/** The layer's place in the model, e.g. "layer 2", "decoder layer 3"; "" when its path has no number. */
export function layerPlace(info: Pick<LayerInfo, 'model_index' | 'stack'>): string {
  if (info.model_index < 0) return '';
  const word = stackWord(info.stack);
  return `${word ? `${word} ` : ''}layer ${info.model_index}`;
}

/**
 * How every view and finding names a layer: its module path and its place in the model,
 * "model.layers.2.mlp (layer 2)", "decoder.block.3.layer.2.mlp (decoder layer 3)",
 * "model.layers.0.self_attention.experts (layer 0, attention experts)".
 */
export function layerLabel(info: LayerInfo): string {
  const notes = [layerPlace(info), info.kind === 'attention' ? 'attention experts' : ''].filter(Boolean);
  const name = info.name || '(the model itself)';
  return notes.length ? `${name} (${notes.join(', ')})` : name;
}

/** A few characters for tight spots (small multiples, table cells): "L2", "dec L3", "L0 attn", or "#5" by probe index. */
export function shortLayerLabel(info: LayerInfo): string {
  const word = stackWord(info.stack);
  const prefix = word ? `${word.slice(0, 3)} ` : '';
  const base = info.model_index >= 0 ? `${prefix}L${info.model_index}` : `#${info.index}`;
  return info.kind === 'attention' ? `${base} attn` : base;
}

/** Experts that do compute: the layer's width less its zero-compute (identity) experts. */
export function computeExperts(info: LayerInfo): number {
  return info.experts - info.identity_experts;
}

const SOURCE_TEXT: Record<LayerInfo['source'], string> = {
  dispatched: 'ids as the block handed them to its experts',
  'expert-inputs': 'rows each expert module received (no per-token ids)',
  router: "ids from the router's output",
  recomputed: "recomputed by the probe as the top-k of the router's logits (nothing else shows the choice)",
};

const DESIGN_TEXT: Record<LayerInfo['design'], string> = {
  'top-k': '',
  'variable-k': 'each token takes as many experts as its router lets through (counts: every expert a token took)',
  'expert-choice': 'experts choose their tokens, so every expert takes the same number by design: '
    + 'load balance says nothing here; tokens no expert took count as dropped',
  soft: 'every token is a weighted mix of all experts: counts show each token\'s largest-weight expert',
  hash: 'experts are looked up from the token id in a fixed table: loads follow the token mix, and the router only weights them',
  fixed: 'the expert is chosen outside the model (e.g. one per input sample): loads follow the inputs, not a router',
};

/** Whether per-expert counts of this layer say anything about load balance (not for expert choice). */
export function loadIsJudgeable(info: Pick<LayerInfo, 'design'>): boolean {
  return info.design !== 'expert-choice';
}

/**
 * Whether the softmax of the router's logits is what chooses, so router entropy findings apply:
 * not for hash tables or fixed routing, nor for gates the model declares as sigmoid or any other
 * non-softmax function.
 */
export function routerEntropyIsJudgeable(info: Pick<LayerInfo, 'design' | 'gating'>): boolean {
  return info.design !== 'hash' && info.design !== 'fixed' && (info.gating === '' || info.gating === 'softmax');
}

/**
 * One sentence on what the panel shows for this layer: its experts, how many per token, how the
 * counts were read, and what the design means for them.
 */
export function routingDescription(info: LayerInfo): string {
  const parts: string[] = [];
  const identity = info.identity_experts ? ` (${info.identity_experts} of them zero-compute: the last ${info.identity_experts === 1 ? 'one' : info.identity_experts})` : '';
  parts.push(`${info.experts} experts${identity}`);
  if (info.design === 'top-k') parts.push(`top-${info.top_k} per token`);
  else if (info.design === 'hash' || info.design === 'fixed') parts.push(`${info.top_k} per token`);
  if (info.shared_experts) parts.push(`plus ${info.shared_experts} shared expert${info.shared_experts === 1 ? '' : 's'} every token goes through (not counted)`);
  if (info.gating) parts.push(`${info.gating} gate`);
  parts.push(`counts: ${SOURCE_TEXT[info.source]}`);
  if (info.token_source === 'none') parts.push('per-token choices: not visible');
  else if (info.token_source === 'recomputed' && info.source !== 'recomputed') parts.push("per-token choices: recomputed from the router's logits");
  const design = DESIGN_TEXT[info.design];
  if (design) parts.push(design);
  return parts.join('; ');
}

/** A LayerInfo for a layer the probe never described (old recordings): named by its probe index only. */
export function unknownLayer(index: number, experts: number, topK = 1): LayerInfo {
  return {
    index, name: `layer ${index}`, arch: '', experts, top_k: Math.max(1, Math.min(topK, experts)), model_index: -1, stack: '',
    kind: 'mlp', design: 'top-k', source: 'router', token_source: 'router', identity_experts: 0, shared_experts: 0, gating: '',
  };
}
