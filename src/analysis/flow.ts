/**
 * Routing flow: how tokens move from the experts of one MoE layer to the experts of the next.
 *
 * Input: per-token routing records, as the probe's token records carry them (the "tokens"
 * messages of src/protocol/panel.ts, which are also the "tokens" lines of a .moerec recording):
 * for each sampled pass, for each layer, k expert ids per token, row-major [n x k] (-1 marks an
 * empty slot of a variable-k layer), and the gate weights [n x k] when the router exposes them.
 * Token i of a pass is the same token in every layer of that pass.
 *
 * For each pair of consecutive chosen layers A -> B, each token present in both records of its
 * pass contributes to the transition (a, b) from expert a of A to expert b of B:
 *  - 'top1':  1 to (top-1 of A, top-1 of B); the counts are whole numbers of tokens. A token's
 *             top-1 is its largest-weight slot when weights are known (ties: the earlier slot),
 *             else its first non-empty slot.
 *  - 'slots': 1 / (kA * kB) to every pair of its non-empty slots (kA, kB: the token's non-empty
 *             slots in A and B): each token is one unit of flow, spread evenly over its choices.
 *  - 'gates': wA_i * wB_j / (sum wA * sum wB) to (a_i, b_j): spread by its gate weights (a layer
 *             without weights, or with non-positive ones for the token, falls back to 'slots').
 * In every mode a token adds exactly 1 to a pair's total, so totals are tokens. A node (layer l,
 * expert e) holds the same token mass: what the tokens present in layer l put on e.
 *
 * A token is left out of a pair when either layer's record of its pass lacks it (that layer not
 * sampled, or no per-token choices there) or has no non-empty slot for it; of a node likewise.
 * `select` narrows the tokens (a text filter, the tokens through one expert); unselected tokens
 * contribute nothing anywhere.
 *
 * Cost: O(tokens x pairs x k^2) for 'slots'/'gates', O(tokens x pairs) for 'top1', plus
 * O(E_A x E_B) per pair to collect the transitions from a dense scratch matrix.
 */
import { makeScratchF64 } from './scratch';

export type FlowWeighting = 'top1' | 'slots' | 'gates';
export const FLOW_WEIGHTINGS: readonly FlowWeighting[] = ['top1', 'slots', 'gates'];

/** One layer's part of one sampled pass. */
export interface FlowLayerRecord {
  layer: number;
  k: number;
  ids: ArrayLike<number>;
  weights?: ArrayLike<number> | null;
}

/** One sampled pass. `n`: tokens in it (default: the longest layer record's ids / k). */
export interface FlowRecord {
  pass: number;
  n?: number;
  tokenIds?: ArrayLike<number> | null;
  texts?: readonly string[] | null;
  layers: readonly FlowLayerRecord[];
}

/** The transitions between two consecutive chosen layers, sparse, ordered by (from expert, to expert). */
export interface FlowPair {
  from: number;
  to: number;
  src: Int32Array;
  dst: Int32Array;
  weight: Float64Array;
  /** Sum of weight: the tokens present in both layers. */
  total: number;
}

export interface RoutingFlow {
  layers: number[];
  weighting: FlowWeighting;
  /** Token mass per expert of each chosen layer (same order as layers). */
  nodes: Float64Array[];
  pairs: FlowPair[];
  /** Tokens selected (present in at least one chosen layer). */
  tokens: number;
  /** Passes that contributed at least one selected token, ascending. */
  passes: number[];
}

export interface FlowOptions {
  weighting?: FlowWeighting;
  /** Narrow the tokens: token `index` of `record`. */
  select?: (record: FlowRecord, index: number) => boolean;
}

/** Slots of one token in one layer record: expert ids and their share of the token's unit of flow. */
function tokenSlots(rec: FlowLayerRecord, i: number, weighting: FlowWeighting, ids: number[], shares: number[], experts: number): number {
  ids.length = 0;
  shares.length = 0;
  const k = rec.k;
  const base = i * k;
  if (k < 1 || base + k > rec.ids.length) return 0;
  const w = rec.weights && rec.weights.length >= base + k ? rec.weights : null;
  if (weighting === 'top1') {
    let best = -1;
    let bestW = -Infinity;
    for (let j = 0; j < k; j++) {
      const id = rec.ids[base + j]!;
      if (!(id >= 0 && id < experts)) continue;
      if (!w) {
        best = id;
        break;
      }
      const wj = w[base + j]!;
      if (best < 0 || wj > bestW) {
        best = id;
        bestW = wj;
      }
    }
    if (best < 0) return 0;
    ids.push(best);
    shares.push(1);
    return 1;
  }
  let sum = 0;
  for (let j = 0; j < k; j++) {
    const id = rec.ids[base + j]!;
    if (!(id >= 0 && id < experts)) continue;
    ids.push(id);
    const wj = weighting === 'gates' && w ? w[base + j]! : 1;
    shares.push(wj);
    sum += wj;
  }
  if (!ids.length) return 0;
  if (weighting === 'gates' && !(sum > 0 && shares.every((s) => s >= 0 && Number.isFinite(s)))) {
    for (let j = 0; j < shares.length; j++) shares[j] = 1;
    sum = shares.length;
  }
  for (let j = 0; j < shares.length; j++) shares[j]! /= sum;
  return ids.length;
}

const pairScratch = makeScratchF64();

/**
 * Transition counts between consecutive `layers` (probe layer indices, in the order to chain
 * them) over `records`; `widths[l]` is layer l's number of experts. Definitions at the top.
 */
export function routingFlow(records: readonly FlowRecord[], layers: readonly number[], widths: readonly number[], options: FlowOptions = {}): RoutingFlow {
  const weighting = options.weighting ?? 'top1';
  if (!FLOW_WEIGHTINGS.includes(weighting)) throw new RangeError(`routingFlow: unknown weighting ${String(weighting)}`);
  for (const l of layers) if (!(widths[l]! >= 1)) throw new RangeError(`routingFlow: layer ${l} has no width`);
  const nodes = layers.map((l) => new Float64Array(widths[l]!));
  const pairsDense: Float64Array[] = [];
  const pairTotals = new Float64Array(Math.max(0, layers.length - 1));
  // One dense scratch matrix per pair, laid end to end in one buffer.
  const pairOffsets: number[] = [];
  let size = 0;
  for (let p = 0; p + 1 < layers.length; p++) {
    pairOffsets.push(size);
    size += widths[layers[p]!]! * widths[layers[p + 1]!]!;
  }
  const dense = pairScratch(size);
  dense.fill(0, 0, size);
  for (let p = 0; p + 1 < layers.length; p++) pairsDense.push(dense.subarray(pairOffsets[p]!, pairOffsets[p]! + widths[layers[p]!]! * widths[layers[p + 1]!]!));

  const slotIds: number[][] = layers.map(() => []);
  const slotShares: number[][] = layers.map(() => []);
  const present = new Uint8Array(layers.length);
  const passes: number[] = [];
  let tokens = 0;
  for (const record of records) {
    const byLayer = layers.map((l) => record.layers.find((r) => r.layer === l) ?? null);
    let n = record.n ?? 0;
    if (record.n === undefined) for (const r of record.layers) n = Math.max(n, r.k > 0 ? Math.floor(r.ids.length / r.k) : 0);
    let used = false;
    for (let i = 0; i < n; i++) {
      if (options.select && !options.select(record, i)) continue;
      let any = false;
      for (let c = 0; c < layers.length; c++) {
        const rec = byLayer[c];
        present[c] = rec && tokenSlots(rec, i, weighting, slotIds[c]!, slotShares[c]!, widths[layers[c]!]!) > 0 ? 1 : 0;
        if (!present[c]) continue;
        any = true;
        const node = nodes[c]!;
        const ids = slotIds[c]!;
        const shares = slotShares[c]!;
        for (let j = 0; j < ids.length; j++) node[ids[j]!]! += shares[j]!;
      }
      if (!any) continue;
      tokens++;
      used = true;
      for (let c = 0; c + 1 < layers.length; c++) {
        if (!present[c] || !present[c + 1]) continue;
        const m = pairsDense[c]!;
        const eb = widths[layers[c + 1]!]!;
        const ia = slotIds[c]!;
        const sa = slotShares[c]!;
        const ib = slotIds[c + 1]!;
        const sb = slotShares[c + 1]!;
        for (let x = 0; x < ia.length; x++) {
          const row = ia[x]! * eb;
          for (let y = 0; y < ib.length; y++) m[row + ib[y]!]! += sa[x]! * sb[y]!;
        }
        pairTotals[c]! += 1;
      }
    }
    if (used) passes.push(record.pass);
  }
  passes.sort((a, b) => a - b);

  const pairs: FlowPair[] = [];
  for (let c = 0; c + 1 < layers.length; c++) {
    const m = pairsDense[c]!;
    const eb = widths[layers[c + 1]!]!;
    let nonzero = 0;
    for (let i = 0; i < m.length; i++) if (m[i] !== 0) nonzero++;
    const src = new Int32Array(nonzero);
    const dst = new Int32Array(nonzero);
    const weight = new Float64Array(nonzero);
    let j = 0;
    for (let i = 0; i < m.length; i++) {
      if (m[i] === 0) continue;
      src[j] = Math.floor(i / eb);
      dst[j] = i % eb;
      weight[j] = m[i]!;
      j++;
    }
    pairs.push({ from: layers[c]!, to: layers[c + 1]!, src, dst, weight, total: pairTotals[c]! });
  }
  return { layers: layers.slice(), weighting, nodes, pairs, tokens, passes };
}

/** How a token shows as text: the tokenizer's string, else "#id", else "·index". */
export function tokenLabel(record: Pick<FlowRecord, 'texts' | 'tokenIds'>, i: number): string {
  const t = record.texts?.[i];
  if (t !== undefined) return t;
  const id = record.tokenIds?.[i];
  return id !== undefined ? `#${id}` : `·${i}`;
}

/**
 * A token filter by text: tokens whose text (tokenLabel) contains `query`, case-insensitively;
 * "#123" matches the token id 123 exactly. An empty query matches every token.
 */
export function tokenTextFilter(query: string): (record: FlowRecord, index: number) => boolean {
  const q = query.trim();
  if (!q) return () => true;
  const id = /^#(\d+)$/.exec(q);
  if (id) {
    const want = Number(id[1]);
    return (r, i) => r.tokenIds?.[i] === want;
  }
  const lower = q.toLowerCase();
  return (r, i) => tokenLabel(r, i).toLowerCase().includes(lower);
}

/**
 * The tokens that went through expert `expert` of layer `layer`: its top-1 for 'top1' weighting,
 * any non-empty slot otherwise (so highlighting an expert follows exactly the flow that reaches it).
 */
export function throughExpert(layer: number, expert: number, weighting: FlowWeighting): (record: FlowRecord, index: number) => boolean {
  const ids: number[] = [];
  const shares: number[] = [];
  return (r, i) => {
    const rec = r.layers.find((x) => x.layer === layer);
    if (!rec || tokenSlots(rec, i, weighting, ids, shares, Number.MAX_SAFE_INTEGER) === 0) return false;
    return ids.includes(expert);
  };
}

/** The weight of one transition (0 when absent). */
export function transition(pair: FlowPair, from: number, to: number): number {
  // src/dst are ordered by (src, dst): binary search.
  let lo = 0;
  let hi = pair.src.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const c = pair.src[mid]! - from || pair.dst[mid]! - to;
    if (c === 0) return pair.weight[mid]!;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return 0;
}
