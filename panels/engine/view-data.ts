/**
 * What the heavier views ask the analysis worker for, beyond the window every view shares:
 * the routing flow (Flow), time buckets (3D activation map), per-layer metrics over time and a
 * diff of two windows (Layers), and the heatmap's rows and column order (Heatmap). Each view
 * asks through the store (Store.setViewRequest) and only the shown view's request is computed,
 * so a view nobody looks at costs nothing. DOM-free; runs in the worker.
 */
import { HEALTH_COLUMNS } from '../../src/protocol/probe';
import {
  layerHealth, layerMetric, loadShift, orderByLoad, orderBySimilarity, routingFlow, throughExpert, tokenTextFilter,
  type FlowPair, type FlowRecord, type FlowWeighting, type LayerMetricId, type LoadShift, type RoutingFlow,
} from '../../src/analysis';
import type { Snapshot, TokenRow } from './analyzer';
import type { Bucket, BucketHistory } from './buckets';
import { closestSnapshot } from './long-history';

export interface FlowRequest {
  /** Probe layer indices: the flow runs from layer `from` to layer `to` through every layer between. */
  from: number;
  to: number;
  weighting: FlowWeighting;
  /** Token text filter (see tokenTextFilter); '' for all tokens. */
  filter: string;
  /** Highlight the tokens through this expert (their flow through every chosen layer). */
  through: { layer: number; expert: number } | null;
}

/** Most transitions sent per layer pair (the largest); the rest are summed in omitted/omittedWeight. */
export const FLOW_MAX_TRANSITIONS = 2000;

export interface FlowData {
  request: FlowRequest;
  /** The flow; a pair with more than FLOW_MAX_TRANSITIONS transitions keeps its largest ones. */
  flow: RoutingFlow;
  /** Per pair: transitions left out and their summed weight (0 when all are there). */
  omitted: Array<{ transitions: number; weight: number }>;
  /** The same flow for the tokens through `request.through` only. */
  highlight: RoutingFlow | null;
  /** Sampled passes in the window (whether or not their tokens passed the filter). */
  sampledPasses: number;
}

export interface BucketsRequest {
  /** The last bucket id the view holds (0: none). */
  since: number;
}

export interface BucketsData {
  buckets: Bucket[];
  /** Ids below this were cleared away. */
  firstId: number;
  capacity: number;
  seconds: number;
}

export interface SeriesRequest {
  metric: LayerMetricId;
}

export interface SeriesData {
  metric: LayerMetricId;
  /** Bucket end times (s since the job's first snapshot). */
  t: Float64Array;
  /** values[b * layers + l]: the metric of layer l over bucket b. */
  values: Float32Array;
  seconds: number;
}

export interface DiffRequest {
  /** Length of both windows, seconds. */
  windowS: number;
  /** How long before now the earlier window ends, seconds. */
  agoS: number;
}

/** A window between two snapshots: the times (s since the job's first snapshot) and passes it covers, and its counts. */
export interface WindowSpan {
  t0: number;
  t1: number;
  fromPass: number;
  toPass: number;
  counts: Float64Array;
  /** Tokens through each layer. */
  tokens: Float64Array;
}

export interface DiffData {
  request: DiffRequest;
  before: WindowSpan;
  after: WindowSpan;
  layers: Array<{ layer: number; shift: LoadShift; routerEntropyBefore: number; routerEntropyAfter: number }>;
  /** Resolution of the long history the earlier window was read from (s between snapshots). */
  spacing: number;
}

export type HeatmapMode = 'layers' | 'time' | 'tokens';
export type HeatmapSort = 'index' | 'load' | 'similarity';

export interface HeatmapRequest {
  mode: HeatmapMode;
  sort: HeatmapSort;
  /** For 'time' and 'tokens': the layer. */
  layer: number;
  /** For 'tokens': the sampled pass (null: the latest with the most tokens). */
  pass: number | null;
}

/** One layer's part of a time bucket. */
export type LayerBucket = Pick<Bucket, 'id' | 't0' | 't1' | 'fromPass' | 'toPass'> & { counts: Float32Array };

export interface HeatmapData {
  request: HeatmapRequest;
  /** Column order (experts by position), null for index order. */
  order: number[] | null;
  /** 'time': the layer's buckets, oldest first. */
  buckets?: LayerBucket[];
}

export interface ViewRequests {
  flow?: FlowRequest;
  buckets?: BucketsRequest;
  series?: SeriesRequest;
  diff?: DiffRequest;
  heatmap?: HeatmapRequest;
}

export interface ViewData {
  flow?: FlowData | null;
  buckets?: BucketsData;
  series?: SeriesData;
  diff?: DiffData | null;
  heatmap?: HeatmapData;
}

/** What the analyzer hands over for one job. */
export interface JobView {
  layers: number;
  widths: number[];
  offsets: number[];
  topK: number[];
  t0: number;
  latest: Snapshot;
  /** Window baseline of the current analysis. */
  base: Snapshot;
  tokensInWindow: TokenRow[];
  recentTokens: TokenRow[];
  buckets: BucketHistory;
  /** Every snapshot still held (fine and long histories, the zero baseline). */
  snapshots: () => Iterable<Snapshot>;
  longSpacing: number;
  /** Per-job cache for results that do not change once computed (bucket metrics, column orders). */
  cache: Map<string, unknown>;
}

const HC = HEALTH_COLUMNS.length;
/** Column orders by similarity are recomputed at most this often (they cost O(E^2 x rows)). */
const ORDER_REFRESH_S = 2;

export function viewData(job: JobView, req: ViewRequests): ViewData {
  const out: ViewData = {};
  if (req.flow) out.flow = flowData(job, req.flow);
  if (req.buckets) {
    out.buckets = { buckets: job.buckets.after(req.buckets.since), firstId: job.buckets.firstId, capacity: job.buckets.ring.capacity, seconds: job.buckets.seconds };
  }
  if (req.series) out.series = seriesData(job, req.series);
  if (req.diff) out.diff = diffData(job, req.diff);
  if (req.heatmap) out.heatmap = heatmapData(job, req.heatmap);
  return out;
}

function flowData(job: JobView, req: FlowRequest): FlowData | null {
  const lo = Math.max(0, Math.min(req.from, req.to));
  const hi = Math.min(job.layers - 1, Math.max(req.from, req.to));
  if (hi < lo) return null;
  const layers: number[] = [];
  for (let l = lo; l <= hi; l++) layers.push(l);
  const records = job.tokensInWindow as unknown as FlowRecord[];
  const text = tokenTextFilter(req.filter);
  const flow = routingFlow(records, layers, job.widths, { weighting: req.weighting, select: text });
  let highlight: RoutingFlow | null = null;
  if (req.through && layers.includes(req.through.layer)) {
    const through = throughExpert(req.through.layer, req.through.expert, req.weighting);
    highlight = routingFlow(records, layers, job.widths, { weighting: req.weighting, select: (r, i) => text(r, i) && through(r, i) });
  }
  const omitted = flow.pairs.map((p, i) => {
    const kept = largest(p, FLOW_MAX_TRANSITIONS);
    flow.pairs[i] = kept;
    let w = 0;
    for (const x of kept.weight) w += x;
    return { transitions: p.src.length - kept.src.length, weight: p.total - w };
  });
  if (highlight) highlight.pairs = highlight.pairs.map((p) => largest(p, FLOW_MAX_TRANSITIONS));
  return { request: req, flow, omitted, highlight, sampledPasses: records.length };
}

/** The pair with only its `max` largest transitions (still ordered by from, to). */
function largest(p: FlowPair, max: number): FlowPair {
  if (p.src.length <= max) return p;
  const idx = Array.from(p.weight.keys()).sort((a, b) => p.weight[b]! - p.weight[a]! || a - b).slice(0, max).sort((a, b) => a - b);
  return {
    ...p, src: Int32Array.from(idx, (i) => p.src[i]!), dst: Int32Array.from(idx, (i) => p.dst[i]!), weight: Float64Array.from(idx, (i) => p.weight[i]!),
  };
}

function bucketLayer(job: JobView, b: Bucket, l: number) {
  const e = job.widths[l]!;
  const off = job.offsets[l]!;
  return {
    counts: b.counts.subarray(off, off + e),
    tokens: b.tokens ? b.tokens[l] : undefined,
    topK: job.topK[l],
    health: b.health ? layerHealth(b.health.subarray(l * HC, (l + 1) * HC), 0, e) : null,
    blockS: b.timeS ? b.timeS[l] : undefined,
    passes: b.toPass - b.fromPass,
  };
}

function seriesData(job: JobView, req: SeriesRequest): SeriesData {
  const buckets = job.buckets.after(0);
  const L = job.layers;
  const values = new Float32Array(buckets.length * L);
  const t = new Float64Array(buckets.length);
  buckets.forEach((b, i) => {
    // A bucket never changes once closed: its metrics are computed once.
    const key = `series:${req.metric}:${b.id}`;
    let row = job.cache.get(key) as Float32Array | undefined;
    if (!row) {
      row = new Float32Array(L);
      for (let l = 0; l < L; l++) row[l] = layerMetric(req.metric, bucketLayer(job, b, l));
      job.cache.set(key, row);
    }
    values.set(row, i * L);
    t[i] = b.t1;
  });
  pruneCache(job, 'series:', buckets[0]?.id ?? 0);
  return { metric: req.metric, t, values, seconds: job.buckets.seconds };
}

/** Forget cached bucket results older than the oldest bucket held. */
function pruneCache(job: JobView, prefix: string, oldest: number): void {
  for (const key of job.cache.keys()) {
    if (!key.startsWith(prefix)) continue;
    const id = Number(key.slice(key.lastIndexOf(':') + 1));
    if (id < oldest) job.cache.delete(key);
  }
}

function span(job: JobView, from: Snapshot, to: Snapshot): WindowSpan {
  const counts = new Float64Array(to.counts.length);
  for (let i = 0; i < counts.length; i++) counts[i] = to.counts[i]! - from.counts[i]!;
  const tokens = new Float64Array(job.layers);
  for (let l = 0; l < job.layers; l++) {
    if (to.tokens && from.tokens) tokens[l] = to.tokens[l]! - from.tokens[l]!;
    else {
      let t = 0;
      for (let e = 0; e < job.widths[l]!; e++) t += counts[job.offsets[l]! + e]!;
      tokens[l] = t / Math.max(1, job.topK[l] ?? 1);
    }
  }
  return { t0: from.ts - job.t0, t1: to.ts - job.t0, fromPass: from.passes, toPass: to.passes, counts, tokens };
}

function routerEntropy(from: Snapshot, to: Snapshot, l: number, e: number): number {
  if (!from.health || !to.health) return NaN;
  const d = new Float64Array(HC);
  for (let c = 0; c < HC; c++) d[c] = to.health[l * HC + c]! - from.health[l * HC + c]!;
  return layerMetric('routerEntropy', { counts: [], health: layerHealth(d, 0, e) });
}

function diffData(job: JobView, req: DiffRequest): DiffData | null {
  const now = job.latest;
  const w = Math.max(0, req.windowS);
  const ago = Math.max(0, req.agoS);
  const snaps = [...job.snapshots()];
  const at = (ts: number) => closestSnapshot(snaps, ts)!;
  const afterFrom = at(now.ts - w);
  const beforeTo = at(now.ts - ago);
  const beforeFrom = at(now.ts - ago - w);
  if (afterFrom === now || beforeTo === beforeFrom) return null;
  const before = span(job, beforeFrom, beforeTo);
  const after = span(job, afterFrom, now);
  const layers = [];
  for (let l = 0; l < job.layers; l++) {
    const e = job.widths[l]!;
    const off = job.offsets[l]!;
    layers.push({
      layer: l,
      shift: loadShift(before.counts.subarray(off, off + e), after.counts.subarray(off, off + e)),
      routerEntropyBefore: routerEntropy(beforeFrom, beforeTo, l, e),
      routerEntropyAfter: routerEntropy(afterFrom, now, l, e),
    });
  }
  return { request: req, before, after, layers, spacing: job.longSpacing };
}

/** The latest sampled pass with the most tokens (a prompt rather than a decode step). */
export function defaultTokenPass(rows: readonly TokenRow[]): TokenRow | null {
  let best: TokenRow | null = null;
  for (const r of rows) if (!best || r.n >= best.n) best = r;
  return best;
}

/** Shares of each row, rows x cols; NaN past a row's width. */
function shares(rows: number, cols: number, widthOf: (r: number) => number, value: (r: number, c: number) => number): Float32Array {
  const m = new Float32Array(rows * cols).fill(NaN);
  for (let r = 0; r < rows; r++) {
    const w = widthOf(r);
    let total = 0;
    for (let c = 0; c < w; c++) total += value(r, c);
    for (let c = 0; c < w; c++) m[r * cols + c] = total > 0 ? value(r, c) / total : 0;
  }
  return m;
}

/** Routing weight of each expert per token of one layer record, normalized per token (1/k' each without weights). */
export function tokenWeights(rec: TokenRow['layers'][number], n: number, experts: number): Float32Array {
  const m = new Float32Array(n * experts);
  for (let i = 0; i < n; i++) {
    let sum = 0;
    let slots = 0;
    for (let j = 0; j < rec.k; j++) {
      const id = rec.ids[i * rec.k + j]!;
      if (id < 0 || id >= experts) continue;
      slots++;
      sum += rec.weights ? Math.max(0, rec.weights[i * rec.k + j]!) : 1;
    }
    if (!slots) continue;
    for (let j = 0; j < rec.k; j++) {
      const id = rec.ids[i * rec.k + j]!;
      if (id < 0 || id >= experts) continue;
      const w = rec.weights ? Math.max(0, rec.weights[i * rec.k + j]!) : 1;
      m[i * experts + id]! += sum > 0 ? w / sum : 1 / slots;
    }
  }
  return m;
}

function heatmapData(job: JobView, req: HeatmapRequest): HeatmapData {
  const out: HeatmapData = { request: req, order: null };
  const layer = Math.max(0, Math.min(job.layers - 1, req.layer));
  const E = job.widths[layer]!;
  const off = job.offsets[layer]!;
  let rows = 0;
  let cols = 0;
  let matrix: Float32Array | null = null;
  if (req.mode === 'time') {
    const buckets = job.buckets.after(0);
    out.buckets = buckets.map(({ id, t0, t1, fromPass, toPass, counts }) => ({ id, t0, t1, fromPass, toPass, counts: counts.slice(off, off + E) }));
    if (req.sort !== 'index') {
      rows = buckets.length;
      cols = E;
      matrix = shares(rows, cols, () => E, (r, c) => out.buckets![r]!.counts[c]!);
    }
  } else if (req.mode === 'tokens') {
    const row = req.pass !== null ? job.recentTokens.find((r) => r.pass === req.pass) ?? null : defaultTokenPass(job.recentTokens);
    const rec = row?.layers.find((x) => x.layer === layer);
    if (row && rec && req.sort !== 'index') {
      rows = row.n;
      cols = E;
      matrix = tokenWeights(rec, row.n, E);
    }
  } else if (req.sort !== 'index') {
    const maxW = Math.max(0, ...job.widths);
    rows = job.layers;
    cols = maxW;
    const counts = new Float64Array(job.latest.counts.length);
    for (let i = 0; i < counts.length; i++) counts[i] = job.latest.counts[i]! - job.base.counts[i]!;
    matrix = shares(rows, cols, (r) => job.widths[r]!, (r, c) => counts[job.offsets[r]! + c]!);
  }
  if (matrix && req.sort === 'load') out.order = orderByLoad(matrix, rows, cols);
  if (matrix && req.sort === 'similarity') {
    const key = `order:${req.mode}:${layer}:${req.pass}`;
    const cached = job.cache.get(key) as { at: number; order: number[]; cols: number } | undefined;
    if (cached && cached.cols === cols && job.latest.ts - cached.at < ORDER_REFRESH_S) out.order = cached.order;
    else {
      out.order = orderBySimilarity(matrix, rows, cols);
      job.cache.set(key, { at: job.latest.ts, order: out.order, cols });
    }
  }
  return out;
}
