/**
 * Comparing the routing of two runs (two sessions, two time ranges of one, or two live jobs),
 * layer by layer: how far apart the expert distributions are (Jensen-Shannon divergence), which
 * experts' shares moved most, load balance and router entropy side by side, and, where both
 * sides recorded per-token routing of identical inputs, the share of tokens whose first-choice
 * expert changed.
 *
 * Layers are paired by the probe's index; a pair whose widths differ is marked not comparable
 * (the models differ there) and given no numbers.
 */
import { jsDivergence, shareChanges, type ShareChange } from './divergence';
import { loadStats } from './load';

/** One sampled pass's per-token routing (the panel's TokenRow satisfies this). */
export interface TokenRouting {
  pass: number;
  phase: 'prefill' | 'decode';
  n: number;
  tokenIds: ArrayLike<number> | null;
  layers: Array<{ layer: number; k: number; ids: ArrayLike<number>; weights: ArrayLike<number> | null }>;
}

/** What one side of a comparison routed over its range. */
export interface RoutingRange {
  widths: number[];
  /** How each layer is named (layerLabel). */
  labels: string[];
  /** Assignments per (layer, expert) over the range, layer after layer. */
  counts: ArrayLike<number>;
  /** Tokens through each layer over the range. */
  tokens: number[];
  /** Mean normalized router entropy per layer over the range; NaN where not measured. */
  routerEntropy: number[];
  /** Mean ms inside each MoE block per pass; NaN where not measured. */
  msPerPass: number[];
  /** Sampled per-token routing in the range (may be empty). */
  tokenRows: TokenRouting[];
}

export interface SideStats {
  tokens: number;
  balancedness: number;
  maxVio: number;
  normalizedLoadEntropy: number;
  routerEntropy: number;
  msPerPass: number;
}

export interface LayerComparison {
  layer: number;
  label: string;
  experts: number;
  /** False when the sides' widths differ at this layer: nothing else is filled in then. */
  comparable: boolean;
  /** Jensen-Shannon divergence of the two expert distributions, bits in [0, 1]; NaN without data. */
  js: number;
  /** Experts whose share changed most (see shareChanges). */
  movers: ShareChange[];
  a: SideStats;
  b: SideStats;
  /** Over tokens of identical inputs both sides recorded: how many, and how many changed first-choice expert. */
  top1: { tokens: number; changed: number; share: number } | null;
}

export interface RoutingComparison {
  layers: LayerComparison[];
  /** The comparable layer with the largest divergence, -1 when none has data. */
  mostDiverged: number;
  /** Sampled passes of identical input found on both sides, and their tokens. */
  matchedPasses: number;
  matchedTokens: number;
  /** Each matched pair: its pass on either side, its tokens, and which input it was (inputKey of its token ids). */
  matched: Array<{ passA: number; passB: number; tokens: number; input: string }>;
}

/** A short name for an input: FNV-1a (32 bit, hex) over its token ids, so the same prompt gets the same name anywhere. */
export function inputKey(tokenIds: ArrayLike<number>): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < tokenIds.length; i++) {
    let v = tokenIds[i]! | 0;
    for (let b = 0; b < 4; b++) {
      h ^= v & 0xff;
      h = Math.imul(h, 0x01000193) >>> 0;
      v >>>= 8;
    }
  }
  return h.toString(16).padStart(8, '0');
}

export interface CompareOptions {
  /** Experts listed per layer as having moved most. Default 5. */
  movers: number;
  /** Least tokens a sampled pass must hold to be matched by its token ids. Default 4. */
  minMatchTokens: number;
}

const DEFAULTS: CompareOptions = { movers: 5, minMatchTokens: 4 };

/**
 * Pairs of sampled passes with identical input, one from each side, each pass used once (in
 * order). Only prefill passes are matched: their token records are the whole input the layer saw
 * (a decode pass's one new token says nothing of the context before it), and only when they hold
 * at least `minTokens` tokens with their ids known.
 */
export function matchIdenticalInputs(a: TokenRouting[], b: TokenRouting[], minTokens = DEFAULTS.minMatchTokens): Array<[TokenRouting, TokenRouting]> {
  const key = (r: TokenRouting) => (r.phase === 'prefill' && r.tokenIds && r.tokenIds.length >= minTokens ? Array.from(r.tokenIds).join(',') : null);
  const waiting = new Map<string, TokenRouting[]>();
  for (const row of b) {
    const k = key(row);
    if (k === null) continue;
    const list = waiting.get(k);
    if (list) list.push(row);
    else waiting.set(k, [row]);
  }
  const pairs: Array<[TokenRouting, TokenRouting]> = [];
  for (const row of a) {
    const k = key(row);
    const list = k === null ? undefined : waiting.get(k);
    if (list?.length) pairs.push([row, list.shift()!]);
  }
  return pairs;
}

/**
 * A token's first-choice expert in a layer's record: the id with the largest weight when the
 * router's weights are known (the order ids come in need not be by score), else the first id.
 * -1 when the token took no expert.
 */
export function firstChoice(ids: ArrayLike<number>, weights: ArrayLike<number> | null, token: number, k: number): number {
  let best = -1;
  let bestW = -Infinity;
  for (let j = 0; j < k; j++) {
    const id = ids[token * k + j]!;
    if (id < 0) continue;
    if (!weights) return id;
    const w = weights[token * k + j]!;
    if (w > bestW) {
      best = id;
      bestW = w;
    }
  }
  return best;
}

function sideStats(counts: ArrayLike<number>, tokens: number, routerEntropy: number, msPerPass: number): SideStats {
  const st = loadStats(counts);
  return { tokens, balancedness: st.balancedness, maxVio: st.maxVio, normalizedLoadEntropy: st.normalizedEntropy, routerEntropy, msPerPass };
}

const NO_STATS: SideStats = { tokens: NaN, balancedness: NaN, maxVio: NaN, normalizedLoadEntropy: NaN, routerEntropy: NaN, msPerPass: NaN };

export function compareRouting(a: RoutingRange, b: RoutingRange, options: Partial<CompareOptions> = {}): RoutingComparison {
  const o = { ...DEFAULTS, ...options };
  const pairs = matchIdenticalInputs(a.tokenRows, b.tokenRows, o.minMatchTokens);
  const layers: LayerComparison[] = [];
  const n = Math.max(a.widths.length, b.widths.length);
  let offA = 0;
  let offB = 0;
  let mostDiverged = -1;
  for (let l = 0; l < n; l++) {
    const wa = a.widths[l] ?? 0;
    const wb = b.widths[l] ?? 0;
    const label = a.labels[l] ?? b.labels[l] ?? `layer ${l}`;
    if (wa !== wb || wa === 0) {
      layers.push({ layer: l, label, experts: Math.max(wa, wb), comparable: false, js: NaN, movers: [], a: NO_STATS, b: NO_STATS, top1: null });
      offA += wa;
      offB += wb;
      continue;
    }
    const ca = Array.prototype.slice.call(a.counts, offA, offA + wa) as number[];
    const cb = Array.prototype.slice.call(b.counts, offB, offB + wb) as number[];
    offA += wa;
    offB += wb;
    const js = jsDivergence(ca, cb);
    layers.push({
      layer: l, label, experts: wa, comparable: true, js, movers: shareChanges(ca, cb, o.movers),
      a: sideStats(ca, a.tokens[l] ?? NaN, a.routerEntropy[l] ?? NaN, a.msPerPass[l] ?? NaN),
      b: sideStats(cb, b.tokens[l] ?? NaN, b.routerEntropy[l] ?? NaN, b.msPerPass[l] ?? NaN),
      top1: firstChoiceChanges(pairs, l),
    });
    if (Number.isFinite(js) && (mostDiverged < 0 || js > layers[mostDiverged]!.js)) mostDiverged = l;
  }
  const matched = pairs.map(([ra, rb]) => ({ passA: ra.pass, passB: rb.pass, tokens: ra.tokenIds!.length, input: inputKey(ra.tokenIds!) }));
  const matchedTokens = matched.reduce((n, m) => n + m.tokens, 0);
  return { layers, mostDiverged, matchedPasses: pairs.length, matchedTokens, matched };
}

/** Over matched passes: tokens of `layer` recorded on both sides, and how many changed first-choice expert. */
function firstChoiceChanges(pairs: Array<[TokenRouting, TokenRouting]>, layer: number): LayerComparison['top1'] {
  let tokens = 0;
  let changed = 0;
  for (const [ra, rb] of pairs) {
    const la = ra.layers.find((x) => x.layer === layer);
    const lb = rb.layers.find((x) => x.layer === layer);
    if (!la || !lb || la.k < 1 || lb.k < 1) continue;
    const count = Math.min(la.ids.length / la.k, lb.ids.length / lb.k, ra.tokenIds!.length);
    for (let i = 0; i < count; i++) {
      const fa = firstChoice(la.ids, la.weights, i, la.k);
      const fb = firstChoice(lb.ids, lb.weights, i, lb.k);
      if (fa < 0 || fb < 0) continue;
      tokens++;
      if (fa !== fb) changed++;
    }
  }
  return tokens ? { tokens, changed, share: changed / tokens } : null;
}
