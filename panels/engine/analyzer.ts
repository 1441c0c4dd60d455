/**
 * The panel's heavy lifting, DOM-free so that it runs in a Web Worker (panels/worker.ts,
 * behind comlink) and in unit tests alike: keeps a bounded history of each job's
 * cumulative snapshots, differences them into a recent window, and runs the
 * routing analyses of src/analysis over that window.
 */
import type { HostMessage, JobUpdate, LossesUpdate, RankSample, TokenUpdate } from '../../src/protocol/panel';
import { HEALTH_COLUMNS, layerOffsets, type LayerInfo, type ModelInfo } from '../../src/protocol/probe';
import {
  coactivation, findings, layerLabel, loadStats, maxVio, resolveThresholds, smallestJudgeableWindow, unknownLayer, vocabularySpecialization,
  type Finding, type LayerWindow, type Thresholds,
} from '../../src/analysis';
import { BucketHistory } from './buckets';
import { LongHistory } from './long-history';
import { Ring } from './ring';
import { compareRanges, planRange, resolveRange, type ComparisonResult, type JobSnapshots, type PlanResult, type RangeSpec } from './long-run';
import { analyzeRanks, type JobRanks, type RanksAnalysis } from './ranks';
import { thinIndices } from './thin';
import { packTokenRows } from './transfer';
import { viewData, type ViewData, type ViewRequests } from './view-data';

const HC = HEALTH_COLUMNS.length;
const H_TOKENS = HEALTH_COLUMNS.indexOf('logit_tokens');
const H_ENTROPY = HEALTH_COLUMNS.indexOf('entropy_sum');
const H_ZLOSS = HEALTH_COLUMNS.indexOf('zloss_sum');
const H_NAN = HEALTH_COLUMNS.indexOf('nan');
const H_INF = HEALTH_COLUMNS.indexOf('inf');
const H_DROPPED = HEALTH_COLUMNS.indexOf('dropped');

/** One cumulative snapshot, as of the end of pass `passes`. */
export interface Snapshot {
  /** Probe clock, seconds since the epoch. */
  ts: number;
  passes: number;
  /** Every layer's experts, layer after layer (see JobData.offsets). */
  counts: Float64Array;
  /** Tokens through each layer; null when the update did not say (then counts / top-k). */
  tokens: Float64Array | null;
  health: Float64Array | null;
  timeS: Float64Array | null;
  probeS: number;
  prefill: number;
  decode: number;
  dropped: number;
  droppedTokens: number;
  /** Training: forward passes in training mode, backward passes, seconds in each layer's backward (cumulative). */
  train: number;
  backward: number;
  backwardS: Float64Array | null;
  /** A distributed job's ranks, each cumulative since its attach (null for a single process). */
  ranks: RankSample[] | null;
  /** The layer of RankSample.counts. */
  rankLayer: number;
}

export type WindowMode = 'seconds' | 'tokens' | 'all';

export interface AnalysisSettings {
  windowMode: WindowMode;
  /** Seconds or tokens, per windowMode. */
  windowValue: number;
  thresholds: Partial<Thresholds>;
  /** Layer for the per-layer views (co-activation, imbalance over time). */
  layer: number;
  /** Most sampled passes to return for the Tokens view. */
  tokenPasses: number;
  /**
   * Most tokens those passes may hold: a decode loop's passes carry one token each, so the
   * view gets a readable stretch of text, and a large prefill pass stays a single pass.
   */
  tokenBudget?: number;
  /** Which of the job's models to analyse (a job may hold several, e.g. of different frameworks); default: the first seen. */
  model?: number;
  /** What the shown view needs beyond the window (panels/engine/view-data.ts). */
  views?: ViewRequests;
  /**
   * Parts of the analysis only some views read (all by default): the recent token records
   * (Tokens, Heatmap) and the co-activation matrix with vocabulary specialization (Co-activation).
   * The panel leaves out what the shown view does not read: at 512 experts the matrix alone is
   * 1 MiB and its computation the worker's largest cost, the records half a MiB, all posted 5
   * times a second to a main thread that would not look at them.
   */
  include?: { tokens?: boolean; coactivation?: boolean };
}

/** Token ids seen fewer times than this in the window are left out of vocabulary specialization. */
const VOCABULARY_MIN_OCCURRENCES = 10;

export const DEFAULT_SETTINGS: AnalysisSettings = {
  windowMode: 'seconds',
  windowValue: 30,
  thresholds: {},
  layer: 0,
  tokenPasses: 4,
  tokenBudget: Infinity,
};

/** The most recent rows, at most `maxRows` of them and (past the first) at most `budget` tokens in all. */
export function recentTokenRows<T extends { n: number }>(rows: T[], maxRows: number, budget = Infinity): T[] {
  let tokens = 0;
  let start = rows.length;
  while (start > 0 && rows.length - start < Math.max(1, maxRows)) {
    const n = rows[start - 1].n;
    if (start < rows.length && tokens + n > budget) break;
    tokens += n;
    start -= 1;
  }
  return rows.slice(start);
}

export interface LayerRow {
  /** The probe's index of the layer (what findings and selections refer to). */
  layer: number;
  /** The layer as the probe describes it: module path, place in the model, design, how it is read. */
  info: LayerInfo;
  /** How views name the layer: "model.layers.2.mlp (layer 2)". */
  label: string;
  experts: number;
  topK: number;
  /** Tokens through the layer in the window. */
  tokens: number;
  maxVio: number;
  /** Mean load / max load (1 / (1 + MaxVio)), SGLang's headline number. */
  balancedness: number;
  cv: number;
  gini: number;
  normalizedEntropy: number;
  effectiveExperts: number;
  zeroExperts: number;
  /** Mean normalized per-token router entropy in the window; NaN when not measured. */
  routerEntropy: number;
  /** ST-MoE router z-loss, mean of logsumexp(logits)^2 over the window's measured tokens; NaN when not measured. */
  zLoss: number;
  nan: number;
  inf: number;
  droppedTokens: number;
  /** Mean ms inside the MoE block per pass; NaN when not measured. */
  msPerPass: number;
  /** Mean ms in the block's backward per backward pass; NaN when none was seen. */
  backwardMsPerPass: number;
  /** Where in Analysis.window.counts this layer's experts start. */
  offset: number;
}

export interface TimelinePoint {
  /** Seconds since the first snapshot of the job. */
  t: number;
  passesPerS: number;
  tokensPerS: number;
  /** Mean over layers of MaxVio, and per layer. */
  maxVio: number;
  maxVioByLayer: Float32Array;
  /** Mean normalized router entropy over layers; NaN when not measured. */
  routerEntropy: number;
  /** Share of the interval's passes that were decode passes; NaN when unknown. */
  decodeShare: number;
  /** Backward passes per second (training); NaN when the job reports none. */
  backwardPerS: number;
}

/** One training pass's losses as the model computed them (see ProbeLosses). */
export interface LossRow {
  pass: number;
  ts: number;
  /** Per layer; NaN where the layer did not route in that pass. */
  aux: number[];
  z: number[];
  modelAux: number;
  loss: number;
}

export interface TokenRow {
  pass: number;
  phase: 'prefill' | 'decode';
  n: number;
  tokenIds: number[] | null;
  texts: string[] | null;
  /** Per layer index: k, ids [n*k], weights [n*k] or null (typed arrays: cheap to post from the worker). */
  layers: Array<{ layer: number; k: number; ids: Int32Array; weights: Float32Array | null }>;
}

/**
 * The timeline as an analysis carries it: one typed array per field (point i of every field is
 * the same interval), per-layer MaxVio row-major [length x layers]. Columns rather than one object
 * per point: the analysis is posted from the worker up to 5 times a second with up to 1200 points,
 * and deserializing 1200 objects cost the main thread about a millisecond each time (2-core AMD
 * EPYC, v8.deserialize), typed arrays next to nothing.
 */
export type TimelineColumns = { length: number; maxVioByLayer: Float32Array } & Record<(typeof TIMELINE_FIELDS)[number], Float64Array>;

/** The fields of TimelinePoint that TimelineColumns holds as one number per point. */
export const TIMELINE_FIELDS = ['t', 'passesPerS', 'tokensPerS', 'maxVio', 'routerEntropy', 'decodeShare', 'backwardPerS'] as const satisfies ReadonlyArray<keyof TimelinePoint>;

/** Timeline points (oldest first) as columns, per-layer MaxVio for the first `layers` layers. */
export function timelineColumns(points: readonly TimelinePoint[], layers: number): TimelineColumns {
  const n = points.length;
  const out = { length: n, maxVioByLayer: new Float32Array(n * layers) } as TimelineColumns;
  for (const f of TIMELINE_FIELDS) {
    const col = new Float64Array(n);
    for (let i = 0; i < n; i++) col[i] = points[i]![f];
    out[f] = col;
  }
  for (let i = 0; i < n; i++) out.maxVioByLayer.set(points[i]!.maxVioByLayer.subarray(0, layers), i * layers);
  return out;
}

export interface Analysis {
  pid: number;
  model: number;
  layers: number;
  /** Experts of each layer; layer l's counts are window.counts[offsets[l] .. offsets[l] + widths[l]). */
  widths: number[];
  offsets: number[];
  /** The widest layer's experts (for views that draw every layer on one grid). */
  maxWidth: number;
  topK: number[];
  /** Cumulative passes since attach (latest snapshot). */
  passes: number;
  /** The window: passes, seconds and tokens (layer 0) it covers, and the counts, layer after layer (see offsets). */
  window: { passes: number; seconds: number; tokens: number; fromPass: number; toPass: number; counts: Float64Array };
  /** Least tokens for a dead-expert verdict, per layer (see smallestJudgeableWindow). */
  judgeable: number[];
  rows: LayerRow[];
  findings: Finding[];
  thresholds: Thresholds;
  /** Up to TIMELINE_SENT points, thinned keeping peaks and dips of the mean MaxVio. */
  timeline: TimelineColumns;
  /** Profiler: per layer ms per pass (rows), probe's own time as a share of block time, rates. */
  profile: { probeShare: number; blockMsPerPass: number; probeMsPerPass: number; passesPerS: number; tokensPerS: number };
  dropped: number;
  droppedTokenRecords: number;
  tokens: TokenRow[];
  /** Co-activation P(j|i) for settings.layer (E x E of that layer) from the sampled tokens in the window; null without token records. */
  coactivation: { layer: number; experts: number; tokens: number; matrix: Float32Array } | null;
  /**
   * For the chosen layer, over the window's sampled tokens: the occurrence-weighted share of each
   * token id's occurrences that go (first choice) to its most frequent expert, over ids seen at
   * least `minOccurrences` times (src/analysis/vocabulary.ts). Null without token ids.
   */
  vocabulary: { layer: number; share: number; ids: number; tokens: number; minOccurrences: number } | null;
  /** Totals of token records kept. */
  tokenPassesKept: number;
  /** Training passes: losses per pass (most recent last) and forward/backward counts in the window; null when none was seen. */
  training: {
    rows: LossRow[];
    trainPasses: number;
    backwardPasses: number;
  } | null;
  /** A distributed job: each rank over the window (absent for a single process). */
  ranks?: RanksAnalysis;
  /** What settings.views asked for. */
  views?: ViewData;
  /** Which of the parts some views read this analysis carries (AnalysisSettings.include). */
  parts: { tokens: boolean; coactivation: boolean };
}

/** Snapshot memory budget per job (bytes of counts); bounds the ring's capacity. */
const SNAPSHOT_BUDGET = 64 * 1024 * 1024;

/** Snapshots kept per job for a model with `totalExperts` (the sum of its layers' widths). */
export function snapshotCapacity(totalExperts: number): number {
  return Math.max(32, Math.min(3000, Math.floor(SNAPSHOT_BUDGET / Math.max(1, totalExperts * 8))));
}
/** Snapshots closer together than this are thinned (the newest is always kept). */
const MIN_SPACING_S = 0.2;
const TIMELINE_POINTS = 3600;
/** Most timeline points an analysis carries (thinned, keeping peaks and dips): about a plot's width in pixels. */
const TIMELINE_SENT = 1200;
const TOKEN_PASSES = 512;
const LOSS_ROWS = 2000;
/** Training rows an analysis carries (the most recent); it is posted from the worker several times a second. */
const LOSS_ROWS_SHOWN = 600;

interface JobData {
  pid: number;
  model: number;
  layers: number;
  widths: number[];
  offsets: number[];
  total: number;
  /** What the probe says about each layer (names, design, how it is read). */
  infos: LayerInfo[];
  topK: number[];
  history: Ring<Snapshot>;
  /** Newest snapshot (may be thinned out of history). */
  latest: Snapshot | null;
  /** Zero counts at attach, the baseline while the history has never been trimmed. */
  zero: Snapshot | null;
  t0: number;
  timeline: Ring<TimelinePoint>;
  tokens: Ring<TokenRow>;
  losses: Ring<LossRow>;
  /** Routing per time bucket and the whole session's snapshots, for the views that look back (view-data.ts). */
  buckets: BucketHistory;
  long: LongHistory;
  viewCache: Map<string, unknown>;
  version: number;
  /** When each rank's figures were first seen (its rates until a window baseline holds it). */
  rankFirstSeen: Map<number, number>;
}

export class Analyzer {
  /** Per job, per model of it (a job may hold several models, e.g. a torch model beside an ONNX session). */
  private jobs = new Map<number, Map<number, JobData>>();
  private models = new Map<number, ModelInfo[]>();
  private ranks = new Map<number, JobRanks>();

  /** Take one host message (only 'attached', 'layers', 'update' and 'tokens' matter here). */
  ingest(message: HostMessage): void {
    if (message.type === 'attached') {
      this.models.set(message.pid, message.models);
    } else if (message.type === 'layers') {
      const models = (this.models.get(message.pid) ?? []).map((m) => (m.id === message.model ? { ...m, layers: message.layers } : m));
      this.models.set(message.pid, models);
      const job = this.jobs.get(message.pid)?.get(message.model);
      if (job && message.layers.length === job.layers) {
        job.infos = layerInfos(message.layers, job.widths);
        job.topK = job.infos.map((l) => l.top_k);
        job.version++;
      }
    } else if (message.type === 'update') {
      this.ingestUpdate(message);
    } else if (message.type === 'tokens') {
      this.ingestTokens(message);
    } else if (message.type === 'losses') {
      this.ingestLosses(message);
    } else if (message.type === 'ranks') {
      this.ranks.set(message.pid, { key: message.key, label: message.label, worldSize: message.worldSize, ranks: message.ranks });
      for (const job of this.jobs.get(message.pid)?.values() ?? []) job.version++;
    }
  }

  ingestMany(messages: HostMessage[]): void {
    for (const m of messages) this.ingest(m);
  }

  /** Forget a job's history; the next snapshot becomes the new baseline. */
  clear(pid: number): void {
    for (const job of this.jobs.get(pid)?.values() ?? []) {
      job.history.clear();
      job.timeline.clear();
      job.tokens.clear();
      job.losses.clear();
      job.buckets.clear();
      job.long.clear();
      job.viewCache.clear();
      job.zero = null;
      if (job.latest) job.history.push(job.latest);
      job.version++;
    }
  }

  forget(pid: number): void {
    this.jobs.delete(pid);
    this.models.delete(pid);
    this.ranks.delete(pid);
  }

  version(pid: number, model?: number): number {
    return this.shown(pid, model)?.version ?? -1;
  }

  /** The model of a job to show: the one asked for, else the first one seen. */
  private shown(pid: number, model?: number): JobData | undefined {
    const models = this.jobs.get(pid);
    if (!models) return undefined;
    return (model !== undefined ? models.get(model) : undefined) ?? models.values().next().value;
  }

  private job(pid: number, model: number, widths: number[]): JobData {
    let models = this.jobs.get(pid);
    if (!models) this.jobs.set(pid, (models = new Map()));
    let job = models.get(model);
    if (job && !sameWidths(job.widths, widths)) job = undefined;
    if (!job) {
      const info = this.models.get(pid)?.find((m) => m.id === model);
      const infos = layerInfos(info?.layers ?? [], widths);
      const offsets = layerOffsets(widths);
      const total = widths.reduce((x, y) => x + y, 0);
      const capacity = snapshotCapacity(total);
      job = {
        pid, model, layers: widths.length, widths: widths.slice(), offsets, total, infos, topK: infos.map((l) => l.top_k),
        history: new Ring(capacity), latest: null, zero: null, t0: NaN,
        timeline: new Ring(TIMELINE_POINTS), tokens: new Ring(TOKEN_PASSES), losses: new Ring(LOSS_ROWS),
        buckets: new BucketHistory(total), long: new LongHistory(total), viewCache: new Map(), version: 0, rankFirstSeen: new Map(),
      };
      models.set(model, job);
    }
    return job;
  }

  private ingestUpdate(u: JobUpdate): void {
    if (u.widths.length !== u.layers || u.counts.length !== u.widths.reduce((x, y) => x + y, 0)) return;
    const job = this.job(u.pid, u.model, u.widths);
    const snap = toSnapshot(u);
    if (job.latest && snap.passes < job.latest.passes) {
      // The counters went backwards: a new attach. Start over.
      job.history.clear();
      job.timeline.clear();
      job.losses.clear();
      job.buckets.clear();
      job.long.clear();
      job.viewCache.clear();
      job.latest = null;
    }
    if (!job.latest) {
      job.t0 = snap.ts;
      if (job.history.size === 0) job.zero = zeroSnapshot(snap);
    }
    for (const r of snap.ranks ?? []) if (!job.rankFirstSeen.has(r.handle)) job.rankFirstSeen.set(r.handle, r.ts);
    const prev = job.history.last();
    if (!prev || snap.ts - prev.ts >= MIN_SPACING_S) job.history.push(snap);
    job.latest = snap;
    job.buckets.add(snap, job.t0);
    job.long.add(snap);
    this.addTimelinePoint(job, snap);
    job.version++;
  }

  private ingestLosses(m: LossesUpdate): void {
    const job = this.jobs.get(m.pid)?.get(m.model);
    if (!job) return;
    const nan = (x: number | null | undefined) => (x === null || x === undefined ? NaN : x);
    m.passes.forEach((pass, i) => {
      job.losses.push({
        pass, ts: m.ts, aux: (m.aux[i] ?? []).map(nan), z: (m.z[i] ?? []).map(nan), modelAux: nan(m.modelAux[i]), loss: nan(m.loss[i]),
      });
    });
    job.version++;
  }

  private ingestTokens(t: TokenUpdate): void {
    const job = this.jobs.get(t.pid)?.get(t.model);
    if (!job) return;
    // Parts of one pass (split by layers) merge into one row.
    let row: TokenRow | undefined;
    for (let i = job.tokens.size - 1; i >= 0 && i >= job.tokens.size - 4; i--) {
      const r = job.tokens.at(i)!;
      if (r.pass === t.pass) row = r;
    }
    if (!row) {
      row = { pass: t.pass, phase: t.phase, n: 0, tokenIds: t.tokenIds, texts: t.texts, layers: [] };
      job.tokens.push(row);
    }
    for (const l of t.layers) {
      if (l.k < 1 || l.ids.length < l.n * l.k || l.layer >= job.layers) continue;
      row.layers = row.layers.filter((x) => x.layer !== l.layer);
      row.layers.push({
        layer: l.layer, k: l.k, ids: Int32Array.from(l.ids.slice(0, l.n * l.k)),
        weights: l.weights ? Float32Array.from(l.weights.slice(0, l.n * l.k)) : null,
      });
      row.n = Math.max(row.n, l.n);
    }
    row.layers.sort((a, b) => a.layer - b.layer);
    if (!row.tokenIds && t.tokenIds) row.tokenIds = t.tokenIds;
    if (!row.texts && t.texts) row.texts = t.texts;
    job.version++;
  }

  private addTimelinePoint(job: JobData, snap: Snapshot): void {
    // Rates over the trailing second (or the oldest snapshot we have).
    let base: Snapshot | undefined;
    for (let i = job.history.size - 1; i >= 0; i--) {
      const h = job.history.at(i)!;
      if (h === snap) continue;
      base = h;
      if (snap.ts - h.ts >= 1) break;
    }
    if (!base && job.zero) return;
    if (!base || snap.ts <= base.ts || snap.passes <= base.passes) return;
    const dt = snap.ts - base.ts;
    const byLayer = new Float32Array(job.layers);
    let vioSum = 0;
    let vioN = 0;
    let entSum = 0;
    let entN = 0;
    const scratch = new Float64Array(Math.max(0, ...job.widths));
    for (let l = 0; l < job.layers; l++) {
      const e = job.widths[l]!;
      const off = job.offsets[l]!;
      for (let i = 0; i < e; i++) scratch[i] = snap.counts[off + i]! - base.counts[off + i]!;
      const vio = maxVio(scratch.subarray(0, e)); // only MaxVio here: loadStats' Gini sorts, 64 times per update
      byLayer[l] = vio;
      if (Number.isFinite(vio)) {
        vioSum += vio;
        vioN++;
      }
      const re = routerEntropyDelta(snap, base, l, e);
      if (Number.isFinite(re)) {
        entSum += re;
        entN++;
      }
    }
    const dPre = snap.prefill - base.prefill;
    const dDec = snap.decode - base.decode;
    const dBackward = snap.backward - base.backward;
    job.timeline.push({
      t: snap.ts - job.t0,
      passesPerS: (snap.passes - base.passes) / dt,
      tokensPerS: layerTokens(job, snap, base, 0) / dt,
      maxVio: vioN ? vioSum / vioN : NaN,
      maxVioByLayer: byLayer,
      routerEntropy: entN ? entSum / entN : NaN,
      decodeShare: dPre + dDec > 0 ? dDec / (dPre + dDec) : NaN,
      backwardPerS: snap.train > 0 ? dBackward / dt : NaN,
    });
  }

  /** The window's baseline snapshot for the given settings. */
  private baseline(job: JobData, s: AnalysisSettings): Snapshot | null {
    const latest = job.latest!;
    const oldest = (job.history.evicted === 0 ? job.zero : null) ?? job.history.at(0) ?? null;
    if (s.windowMode === 'all') return oldest;
    for (let i = job.history.size - 1; i >= 0; i--) {
      const snap = job.history.at(i)!;
      if (snap === latest) continue;
      if (s.windowMode === 'seconds' ? latest.ts - snap.ts >= s.windowValue - 1e-6 : layerTokens(job, latest, snap, 0) >= s.windowValue) {
        return snap;
      }
    }
    return oldest;
  }

  /** What the long-run views read of a job (panels/engine/long-run.ts); null before its first snapshot. */
  private snapshotsOf(pid: number, settings: Partial<AnalysisSettings>): JobSnapshots | null {
    const job = this.shown(pid, settings.model);
    if (!job || !job.latest) return null;
    const snapshots = job.history.toArray();
    if (snapshots[snapshots.length - 1] !== job.latest) snapshots.push(job.latest);
    return {
      pid, widths: job.widths, offsets: job.offsets, infos: job.infos, topK: job.topK, snapshots,
      zero: job.history.evicted === 0 ? job.zero : null, t0: job.t0, tokens: job.tokens.toArray(),
      windowBase: this.baseline(job, { ...DEFAULT_SETTINGS, ...settings }) ?? job.latest,
    };
  }

  /** Two jobs' routing (or two ranges of one) side by side; null while either has no snapshot. */
  compare(a: { pid: number; range: RangeSpec }, b: { pid: number; range: RangeSpec }, settings: Partial<AnalysisSettings> = {}): ComparisonResult | null {
    const ja = this.snapshotsOf(a.pid, settings);
    const jb = this.snapshotsOf(b.pid, settings);
    const ra = ja && resolveRange(ja, a.range);
    const rb = jb && resolveRange(jb, b.range);
    return ra && rb ? compareRanges(ra, rb) : null;
  }

  /** Expert placement plans from a job's loads over a range (all layers, or the given ones). */
  plan(pid: number, range: RangeSpec, devices: number, redundant: number, layers?: number[], settings: Partial<AnalysisSettings> = {}): PlanResult | null {
    const job = this.snapshotsOf(pid, settings);
    const r = job && resolveRange(job, range);
    return job && r ? planRange(job, r, devices, redundant, layers) : null;
  }

  analyze(pid: number, settings: Partial<AnalysisSettings> = {}): Analysis | null {
    const s: AnalysisSettings = { ...DEFAULT_SETTINGS, ...settings };
    const job = this.shown(pid, s.model);
    if (!job || !job.latest) return null;
    const latest = job.latest;
    const base = this.baseline(job, s) ?? latest;
    const { layers: L, widths, offsets } = job;
    const th = resolveThresholds(s.thresholds);

    const counts = new Float64Array(job.total);
    for (let i = 0; i < counts.length; i++) counts[i] = latest.counts[i]! - base.counts[i]!;
    const dPasses = latest.passes - base.passes;
    const dt = latest.ts - base.ts;
    let blockTotal = 0;
    const rows: LayerRow[] = [];
    const windows: LayerWindow[] = [];
    const judgeable: number[] = [];
    for (let l = 0; l < L; l++) {
      const info = job.infos[l]!;
      const k = Math.max(1, job.topK[l] ?? 1);
      const e = widths[l]!;
      const c = counts.subarray(offsets[l]!, offsets[l]! + e);
      const st = loadStats(c);
      const tokens = layerTokens(job, latest, base, l);
      const nan = healthDelta(latest, base, l, H_NAN);
      const inf = healthDelta(latest, base, l, H_INF);
      // Assignments no expert served; in tokens for a top-k layer read from its experts' rows.
      const droppedRaw = Math.max(healthDelta(latest, base, l, H_DROPPED), 0);
      const dropped = info.source === 'expert-inputs' ? droppedRaw / k : droppedRaw;
      // the entropy of logits with NaN/Inf replaced says nothing: shown as not measured
      const re = nan + inf > 0 ? NaN : routerEntropyDelta(latest, base, l, e);
      const blockS = latest.timeS && base.timeS ? latest.timeS[l]! - base.timeS[l]! : NaN;
      // a baseline from before any training pass has no backward times: none had been spent
      const backwardS = latest.backwardS ? latest.backwardS[l]! - (base.backwardS?.[l] ?? 0) : NaN;
      const dBackward = latest.backward - base.backward;
      if (Number.isFinite(blockS)) blockTotal += blockS;
      const label = layerLabel(info);
      rows.push({
        layer: l, info, label, experts: e, topK: k, tokens, maxVio: st.maxVio, balancedness: st.balancedness, cv: st.cv, gini: st.gini,
        normalizedEntropy: st.normalizedEntropy, effectiveExperts: st.effectiveExperts, zeroExperts: st.zeroExperts,
        routerEntropy: re, zLoss: zLossDelta(latest, base, l), nan, inf, droppedTokens: dropped, msPerPass: dPasses > 0 ? (1000 * blockS) / dPasses : NaN,
        backwardMsPerPass: dBackward > 0 ? (1000 * backwardS) / dBackward : NaN,
        offset: offsets[l]!,
      });
      windows.push({
        layer: l, label, design: info.design, gating: info.gating, counts: c, topK: k, tokens, nanLogits: nan, infLogits: inf,
        droppedTokens: dropped, routerEntropy: Number.isFinite(re) ? re : undefined,
      });
      judgeable.push(smallestJudgeableWindow(e, k, th.minTokens, th.minExpectedPerExpert));
    }
    const found = findings(windows, th);
    const probeS = latest.probeS - base.probeS;
    const tokens0 = rows[0]?.tokens ?? 0;

    // Token records in the window.
    const inWindow: TokenRow[] = [];
    for (let i = 0; i < job.tokens.size; i++) {
      const r = job.tokens.at(i)!;
      if (r.pass > base.passes || dPasses === 0) inWindow.push(r);
    }
    const layer = Math.min(Math.max(0, s.layer), L - 1);
    const E = widths[layer] ?? 0;
    let co: Analysis['coactivation'] = null;
    const withCoactivation = s.include?.coactivation !== false;
    const withTokens = s.include?.tokens !== false;
    if (withCoactivation) {
      const ids: number[] = [];
      let n = 0;
      let k = 0;
      for (const r of inWindow) {
        const lr = r.layers.find((x) => x.layer === layer);
        if (!lr || (k && lr.k !== k)) continue;
        k = lr.k;
        for (let i = 0; i < lr.ids.length; i++) ids.push(lr.ids[i]!);
        n += lr.ids.length / lr.k;
      }
      if (n > 0 && k > 0 && E > 0) co = { layer, experts: E, tokens: n, matrix: Float32Array.from(coactivation(ids, n, k, E)) };
    }
    let vocabulary: Analysis['vocabulary'] = null;
    if (withCoactivation) {
      const tokenIds: number[] = [];
      const top1: number[] = [];
      for (const r of inWindow) {
        const lr = r.layers.find((x) => x.layer === layer);
        if (!lr || !r.tokenIds) continue;
        for (let i = 0; i < lr.ids.length / lr.k && i < r.tokenIds.length; i++) {
          const first = lr.ids[i * lr.k]!;
          if (first < 0) continue; // a token no expert took (variable-k)
          tokenIds.push(r.tokenIds[i]!);
          top1.push(first);
        }
      }
      const spec = vocabularySpecialization(tokenIds, top1, VOCABULARY_MIN_OCCURRENCES);
      if (spec.idsConsidered > 0) {
        vocabulary = { layer, share: spec.weightedShare, ids: spec.idsConsidered, tokens: spec.tokensConsidered, minOccurrences: VOCABULARY_MIN_OCCURRENCES };
      }
    }

    const recentTokens = recentTokenRows(job.tokens.toArray(), s.tokenPasses, s.tokenBudget);
    const views = s.views ? viewData({
      layers: L, widths, offsets, topK: job.topK, t0: job.t0, latest, base, tokensInWindow: inWindow, recentTokens,
      buckets: job.buckets, longSpacing: job.long.spacing, cache: job.viewCache,
      snapshots: () => snapshotsOf(job),
    }, s.views) : undefined;

    const all = job.timeline.toArray();
    const timeline = timelineColumns(thinIndices(all.length, TIMELINE_SENT, (i) => all[i]!.maxVio).map((i) => all[i]!), L);

    return {
      pid, model: job.model, layers: L, widths: widths.slice(), offsets: offsets.slice(), maxWidth: Math.max(0, ...widths),
      topK: job.topK.slice(), passes: latest.passes,
      window: { passes: dPasses, seconds: dt, tokens: tokens0, fromPass: base.passes, toPass: latest.passes, counts },
      judgeable, rows, findings: found, thresholds: th,
      timeline,
      profile: {
        probeShare: blockTotal > 0 ? probeS / blockTotal : NaN,
        blockMsPerPass: dPasses > 0 && latest.timeS ? (1000 * blockTotal) / dPasses : NaN,
        probeMsPerPass: dPasses > 0 ? (1000 * probeS) / dPasses : NaN,
        passesPerS: dt > 0 ? dPasses / dt : NaN,
        tokensPerS: dt > 0 ? tokens0 / dt : NaN,
      },
      dropped: latest.dropped,
      droppedTokenRecords: latest.droppedTokens,
      tokens: withTokens ? packTokenRows(recentTokens) : [],
      coactivation: co,
      vocabulary,
      tokenPassesKept: job.tokens.size,
      training: latest.train > 0 || job.losses.size > 0
        ? { rows: job.losses.toArray().slice(-LOSS_ROWS_SHOWN), trainPasses: latest.train - base.train, backwardPasses: latest.backward - base.backward }
        : null,
      ...(latest.ranks ? { ranks: this.ranksOf(job, latest, base) } : {}),
      views,
      parts: { tokens: withTokens, coactivation: withCoactivation },
    };
  }

  /** Each rank over the window; its per-expert counts from the first snapshot of the same layer. */
  private ranksOf(job: JobData, latest: Snapshot, base: Snapshot): RanksAnalysis {
    let countsBase: Snapshot = base;
    if (base.ranks && base.rankLayer !== latest.rankLayer) {
      countsBase = latest;
      for (let i = 0; i < job.history.size; i++) {
        const snap = job.history.at(i)!;
        if (snap.ts >= base.ts && snap.rankLayer === latest.rankLayer) {
          countsBase = snap;
          break;
        }
      }
    }
    return analyzeRanks(this.ranks.get(job.pid), latest, base, countsBase, job.rankFirstSeen);
  }
}

/** Every snapshot a job still holds: the zero baseline, the fine history, the long history and the latest. */
function* snapshotsOf(job: JobData): Iterable<Snapshot> {
  if (job.zero && job.history.evicted === 0) yield job.zero;
  for (let i = 0; i < job.history.size; i++) yield job.history.at(i)!;
  yield* job.long.all();
  if (job.latest) yield job.latest;
}

/** The probe's layer descriptions, or stand-ins named by index where it gave none (old recordings). */
function layerInfos(infos: LayerInfo[], widths: number[]): LayerInfo[] {
  return widths.map((w, l) => {
    const info = infos[l];
    return info && info.experts === w ? info : unknownLayer(l, w, info?.top_k ?? 1);
  });
}

function sameWidths(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((w, i) => w === b[i]);
}

function toSnapshot(u: JobUpdate): Snapshot {
  const L = u.layers;
  return {
    ts: u.ts,
    passes: u.passes,
    counts: Float64Array.from(u.counts),
    tokens: u.tokens && u.tokens.length === L ? Float64Array.from(u.tokens) : null,
    health: u.health && u.health.length === L * HC ? Float64Array.from(u.health) : null,
    timeS: u.timeS && u.timeS.length === L ? Float64Array.from(u.timeS) : null,
    probeS: u.probeS ?? 0,
    prefill: u.prefill ?? 0,
    decode: u.decode ?? 0,
    dropped: u.dropped,
    droppedTokens: u.droppedTokens ?? 0,
    train: u.train ?? 0,
    backward: u.backward ?? 0,
    backwardS: u.backwardS && u.backwardS.length === L ? Float64Array.from(u.backwardS) : null,
    ranks: u.ranks ?? null,
    rankLayer: u.rankLayer ?? 0,
  };
}

function zeroSnapshot(like: Snapshot): Snapshot {
  return {
    ts: like.ts, passes: 0, counts: new Float64Array(like.counts.length),
    tokens: like.tokens ? new Float64Array(like.tokens.length) : null,
    health: like.health ? new Float64Array(like.health.length) : null,
    timeS: like.timeS ? new Float64Array(like.timeS.length) : null,
    probeS: 0, prefill: 0, decode: 0, dropped: 0, droppedTokens: 0, ranks: null, rankLayer: like.rankLayer,
    train: 0, backward: 0, backwardS: like.backwardS ? new Float64Array(like.backwardS.length) : null,
  };
}

/** Tokens through one layer between two snapshots: as the probe counted them, else assignments / top-k. */
function layerTokens(job: JobData, a: Snapshot, b: Snapshot, layer: number): number {
  if (a.tokens && b.tokens) return a.tokens[layer]! - b.tokens[layer]!;
  let t = 0;
  const off = job.offsets[layer]!;
  for (let i = off; i < off + job.widths[layer]!; i++) t += a.counts[i]! - b.counts[i]!;
  return t / Math.max(1, job.topK[layer] ?? 1);
}

function healthDelta(a: Snapshot, b: Snapshot, layer: number, col: number): number {
  if (!a.health || !b.health) return 0;
  return a.health[layer * HC + col]! - b.health[layer * HC + col]!;
}

/** Mean router z-loss (logsumexp^2) between two snapshots; NaN when no logits were measured. */
function zLossDelta(a: Snapshot, b: Snapshot, layer: number): number {
  const n = healthDelta(a, b, layer, H_TOKENS);
  return a.health && b.health && n > 0 ? healthDelta(a, b, layer, H_ZLOSS) / n : NaN;
}

/** Mean normalized per-token router entropy between two snapshots; NaN when no logits were measured. */
function routerEntropyDelta(a: Snapshot, b: Snapshot, layer: number, e: number): number {
  if (!a.health || !b.health || e < 2) return NaN;
  const n = healthDelta(a, b, layer, H_TOKENS);
  if (!(n > 0)) return NaN;
  return healthDelta(a, b, layer, H_ENTROPY) / n / Math.log(e);
}
