/**
 * Distributed jobs: the ranks of one job shown as its logical model, and each rank on its own.
 *
 * A rank's counts are what its own experts processed, at global expert ids (the probe reads
 * expert-parallel layers that way, see native-host/moe_probe/expert_parallel.py), so the job's
 * logical counts are exactly the sum over its ranks, whether tokens were dispatched all-to-all
 * to the experts' ranks or each rank is a data-parallel replica. Pure functions, used by the host
 * (merging, checking that ranks agree) and by the panel (per-rank windows and findings).
 */
import type { JobUpdate, RankInfo, RankSample } from '../protocol/panel';
import { HEALTH_COLUMNS, layerOffsets, type LayerInfo, type ModelInfo } from '../protocol/probe';

/** The sum over ranks of their latest cumulative updates (all of the same widths); max for maxLogit. */
export function mergeRankUpdates(updates: readonly JobUpdate[], widths: readonly number[]): Omit<JobUpdate, 'type' | 'pid' | 'model' | 'ts'> {
  const L = widths.length;
  const total = widths.reduce((a, b) => a + b, 0);
  const counts = new Array<number>(total).fill(0);
  const tokens = new Array<number>(L).fill(0);
  const hc = HEALTH_COLUMNS.length;
  let health: number[] | undefined;
  let maxLogit: number[] | undefined;
  let timeS: number[] | undefined;
  let expertS: number[] | undefined;
  let passes = 0;
  let dropped = 0;
  let droppedTokens = 0;
  let probeS = 0;
  let prefill = 0;
  let decode = 0;
  let shape: number[] | undefined;
  for (const u of updates) {
    for (let i = 0; i < total; i++) counts[i] += u.counts[i]!;
    for (let l = 0; l < L; l++) tokens[l] += u.tokens?.[l] ?? 0;
    if (u.health && u.health.length === L * hc) {
      health ??= new Array<number>(L * hc).fill(0);
      for (let i = 0; i < L * hc; i++) health[i] += u.health[i]!;
    }
    if (u.maxLogit && u.maxLogit.length === L) {
      maxLogit ??= new Array<number>(L).fill(-Infinity);
      for (let l = 0; l < L; l++) maxLogit[l] = Math.max(maxLogit[l]!, u.maxLogit[l]!);
    }
    if (u.timeS && u.timeS.length === L) {
      timeS ??= new Array<number>(L).fill(0);
      for (let l = 0; l < L; l++) timeS[l] += u.timeS[l]!;
    }
    if (u.expertS && u.expertS.length === L) {
      expertS ??= new Array<number>(L).fill(0);
      for (let l = 0; l < L; l++) expertS[l] += u.expertS[l]!;
    }
    passes += u.passes;
    dropped += u.dropped;
    droppedTokens += u.droppedTokens ?? 0;
    probeS += u.probeS ?? 0;
    prefill += u.prefill ?? 0;
    decode += u.decode ?? 0;
    shape ??= u.shape;
  }
  const out: Omit<JobUpdate, 'type' | 'pid' | 'model' | 'ts'> = {
    passes, layers: L, widths: widths.slice(), counts, tokens, dropped, droppedTokens, probeS, prefill, decode,
  };
  if (health) out.health = health;
  if (maxLogit) out.maxLogit = maxLogit;
  if (timeS) out.timeS = timeS;
  if (expertS) out.expertS = expertS;
  if (shape) out.shape = shape;
  return out;
}

/** One rank's cumulative figures for its job's update: totals, and `layer` in detail (its counts unless `withCounts` is false). */
export function rankSample(handle: number, rank: number, u: JobUpdate, layer: number, withCounts = true): RankSample {
  const offsets = layerOffsets(u.widths);
  let load = 0;
  for (const c of u.counts) load += c;
  const inLayer = layer >= 0 && layer < u.layers ? u.counts.slice(offsets[layer]!, offsets[layer]! + u.widths[layer]!) : [];
  const sample: RankSample = {
    handle, rank, passes: u.passes, ts: u.ts, tokens: u.tokens?.[0] ?? 0, load, layerLoad: inLayer.reduce((a, b) => a + b, 0), dropped: u.dropped,
  };
  if (u.timeS) sample.timeS = u.timeS.reduce((a, b) => a + b, 0);
  if (u.expertS) sample.expertS = u.expertS.reduce((a, b) => a + b, 0);
  if (withCounts && inLayer.length) sample.counts = inLayer;
  return sample;
}

const describeModel = (m: ModelInfo) => `${m.class || 'a model'} with ${m.layers.length} MoE layer${m.layers.length === 1 ? '' : 's'}`;

/**
 * Why a rank's model cannot be merged with its job's, or null when it can: the same MoE layers
 * (module paths) with the same global widths. Top-k may differ until the first calls tell.
 */
export function modelMismatch(job: ModelInfo, rank: ModelInfo): string | null {
  if (job.layers.length !== rank.layers.length) return `it runs ${describeModel(rank)}, the job ${describeModel(job)}`;
  for (let l = 0; l < job.layers.length; l++) {
    const a = job.layers[l]!;
    const b = rank.layers[l]!;
    if (a.name !== b.name) return `its MoE layer ${l} is ${b.name || '(the model itself)'}, the job's is ${a.name || '(the model itself)'}`;
    if (a.experts !== b.experts) return `its layer ${a.name} chooses among ${b.experts} experts, the job's among ${a.experts}`;
  }
  return null;
}

/** The global experts each layer of a model holds: `held` for expert-parallel layers, null where all. */
export function heldByLayer(model: ModelInfo): Array<number[] | null> {
  return model.layers.map((l) => l.held ?? null);
}

const list = (ids: readonly number[]) => ids.join(', ');

/**
 * Why a rank's expert map conflicts with those of the ranks already in its job, or null. Ranks may
 * hold the same experts (data-parallel replicas add up) or different ones, but a rank that holds
 * some experts of another rank's slice and not others cannot both be right.
 */
export function expertMapConflict(
  layers: readonly LayerInfo[], others: ReadonlyArray<{ rank: number; held: Array<number[] | null> }>, newcomer: { rank: number; held: Array<number[] | null> },
): string | null {
  for (let l = 0; l < layers.length; l++) {
    const mine = newcomer.held[l];
    if (!mine) continue;
    const set = new Set(mine);
    for (const other of others) {
      const theirs = other.held[l];
      if (!theirs) continue;
      const shared = theirs.filter((e) => set.has(e));
      if (shared.length && (shared.length !== theirs.length || shared.length !== mine.length)) {
        return `it says it holds experts ${list(mine)} of ${layers[l]!.name}, rank ${other.rank} holds ${list(theirs)}: `
          + 'two ranks that share some experts of a layer but not all (a replica holds the same slice as the rank it copies)';
      }
    }
  }
  return null;
}

/** Per layer, the experts no listed rank holds (a rank with no map for a layer holds all of it). */
export function uncoveredExperts(widths: readonly number[], held: ReadonlyArray<Array<number[] | null>>): Array<{ layer: number; experts: number[] }> {
  const out: Array<{ layer: number; experts: number[] }> = [];
  widths.forEach((w, l) => {
    if (held.some((h) => !h[l])) return;
    const covered = new Set(held.flatMap((h) => h[l] ?? []));
    const missing = Array.from({ length: w }, (_, e) => e).filter((e) => !covered.has(e));
    if (missing.length) out.push({ layer: l, experts: missing });
  });
  return out;
}

/** "rank 2 (pid 4242 on gpu-7)" */
export function rankName(r: Pick<RankInfo, 'rank' | 'pid' | 'node'>): string {
  return `rank ${r.rank} (pid ${r.pid}${r.node ? ` on ${r.node}` : ''})`;
}

/** "Rank 2 (pid ...)" from "rank 2 (pid ...)": messages start with a capital. */
export const capitalized = (text: string) => text.charAt(0).toUpperCase() + text.slice(1);

/** "ranks 0, 1 and 3 go on", "rank 0 goes on", "no rank is left" */
export function goOn(ranks: readonly number[]): string {
  return ranks.length ? `${rankList(ranks)} ${ranks.length === 1 ? 'goes' : 'go'} on` : 'no rank is left';
}

/** "ranks 0, 1 and 3" */
export function rankList(ranks: readonly number[]): string {
  const sorted = [...ranks].sort((a, b) => a - b);
  if (!sorted.length) return 'no rank';
  if (sorted.length === 1) return `rank ${sorted[0]}`;
  return `ranks ${sorted.slice(0, -1).join(', ')} and ${sorted[sorted.length - 1]}`;
}

// -- per-rank windows (the panel's Ranks view) ----------------------------------------------------

/** Thresholds of the per-rank findings. */
export interface RankThresholds {
  /** A straggler when a rank's time in MoE layers per pass exceeds the median rank's by this fraction. Default 0.5. */
  stragglerExcess: number;
  /** Overloaded when a rank's experts process more than this fraction above the mean rank's load. Default 0.5. */
  overloadExcess: number;
  /** Least passes of a rank in the window before its time is judged. Default 10. */
  minPasses: number;
  /** Least assignments in the window, all ranks together, before loads are judged. Default 1000. */
  minLoad: number;
}

export const DEFAULT_RANK_THRESHOLDS: Readonly<RankThresholds> = Object.freeze({ stragglerExcess: 0.5, overloadExcess: 0.5, minPasses: 10, minLoad: 1000 });

/** One rank over the analysis window: differences of its cumulative figures. */
export interface RankWindow {
  handle: number;
  rank: number;
  pid: number;
  node: string;
  via: string;
  status: RankInfo['status'];
  message?: string;
  /** Global experts it holds in the detail layer (null: all). */
  held: number[] | null;
  passes: number;
  seconds: number;
  /** Its own tokens through the first MoE layer. */
  tokens: number;
  /** Assignments its experts processed, all layers, and in the detail layer. */
  load: number;
  layerLoad: number;
  /** Seconds in MoE blocks, all layers; null when not measured. */
  timeS: number | null;
  /** Seconds inside its own experts, all layers (expert-parallel jobs); null when not measured. */
  expertS: number | null;
  /** What its experts processed per global expert in the detail layer; null when not sent. */
  counts: number[] | null;
}

export interface RankRow extends RankWindow {
  passesPerS: number;
  tokensPerS: number;
  /** Assignments its experts processed per second, all MoE layers. */
  loadPerS: number;
  /** Its share of all ranks' expert work in the window (0..1). */
  loadShare: number;
  /** ms in MoE blocks per pass, all layers; NaN when not measured. */
  moeMsPerPass: number;
  /** ms inside its own experts per pass (expert-parallel jobs): its compute, without all-to-all waits; NaN when not measured. */
  expertMsPerPass: number;
}

export interface RankFinding {
  kind: 'rank_ended' | 'rank_excluded' | 'rank_stalled' | 'rank_straggler' | 'rank_overloaded';
  rank: number;
  value?: number;
  threshold?: number;
  message: string;
}

const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);

export function median(values: readonly number[]): number {
  const s = [...values].filter(Number.isFinite).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function rankRows(windows: readonly RankWindow[]): RankRow[] {
  const totalLoad = sum(windows.map((w) => w.load));
  return windows.map((w) => ({
    ...w,
    passesPerS: w.seconds > 0 ? w.passes / w.seconds : NaN,
    tokensPerS: w.seconds > 0 ? w.tokens / w.seconds : NaN,
    loadPerS: w.seconds > 0 ? w.load / w.seconds : NaN,
    loadShare: totalLoad > 0 ? w.load / totalLoad : NaN,
    moeMsPerPass: w.timeS !== null && w.passes > 0 ? (1000 * w.timeS) / w.passes : NaN,
    expertMsPerPass: w.expertS !== null && w.passes > 0 ? (1000 * w.expertS) / w.passes : NaN,
  }));
}

/** Largest value over the median (1 = no skew); NaN with fewer than two values. */
export function skew(values: readonly number[]): number {
  const finite = values.filter(Number.isFinite);
  if (finite.length < 2) return NaN;
  const m = median(finite);
  return m > 0 ? Math.max(...finite) / m : NaN;
}

const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

/**
 * What ranks are timed by: the time inside their own experts where it is measured (expert parallel:
 * the time in MoE blocks includes waiting for the other ranks in the all-to-all, so the rank the
 * others wait for shows the least), else the time in their MoE blocks.
 */
export type TimeBasis = 'experts' | 'blocks';

export function timeBasis(rows: readonly RankRow[]): TimeBasis {
  return rows.some((r) => Number.isFinite(r.expertMsPerPass)) ? 'experts' : 'blocks';
}

export function rankTime(r: RankRow, basis: TimeBasis): number {
  return basis === 'experts' ? r.expertMsPerPass : r.moeMsPerPass;
}

/** What to tell the user about the ranks, worst first within each kind. */
export function rankFindings(rows: readonly RankRow[], overrides: Partial<RankThresholds> = {}): RankFinding[] {
  const th = { ...DEFAULT_RANK_THRESHOLDS, ...overrides };
  const out: RankFinding[] = [];
  const live = rows.filter((r) => r.status === 'attached');
  for (const r of rows) {
    if (r.status === 'excluded') out.push({ kind: 'rank_excluded', rank: r.rank, message: `Rank ${r.rank} is left out of the job's view: ${r.message ?? 'it does not agree with the other ranks'}.` });
    else if (r.status !== 'attached') out.push({ kind: 'rank_ended', rank: r.rank, message: `${capitalized(rankName(r))} ${r.message ?? r.status}; ${goOn(live.filter((x) => x !== r).map((x) => x.rank))}.` });
  }
  const busiest = Math.max(0, ...live.map((r) => r.passes));
  for (const r of live) {
    if (r.passes === 0 && busiest >= th.minPasses) {
      out.push({ kind: 'rank_stalled', rank: r.rank, value: 0, threshold: 0, message: `Rank ${r.rank} ran no pass in the window while others ran up to ${busiest}: it may be stuck (waiting on a collective, or hung).` });
    }
  }
  const basis = timeBasis(live);
  const judged = live.filter((r) => r.passes >= th.minPasses && Number.isFinite(rankTime(r, basis)));
  const mid = median(judged.map((r) => rankTime(r, basis)));
  if (judged.length >= 2 && mid > 0) {
    for (const r of [...judged].sort((a, b) => rankTime(b, basis) - rankTime(a, basis))) {
      const t = rankTime(r, basis);
      const excess = t / mid - 1;
      if (excess > th.stragglerExcess) {
        out.push({
          kind: 'rank_straggler', rank: r.rank, value: excess, threshold: th.stragglerExcess,
          message: basis === 'experts'
            ? `Rank ${r.rank}'s experts compute for ${t.toFixed(2)} ms per pass, ${pct(excess)} over the median rank's ${mid.toFixed(2)} ms: the other ranks wait for it in the all-to-all`
            : `Rank ${r.rank} spends ${t.toFixed(2)} ms per pass in its MoE layers, ${pct(excess)} over the median rank's ${mid.toFixed(2)} ms`,
        });
      }
    }
  }
  const loads = live.map((r) => r.load);
  const mean = loads.length ? sum(loads) / loads.length : 0;
  if (live.length >= 2 && sum(loads) >= th.minLoad && mean > 0) {
    live.map((r, i) => ({ r, excess: loads[i]! / mean - 1 })).sort((a, b) => b.excess - a.excess).forEach(({ r, excess }) => {
      if (excess > th.overloadExcess) {
        out.push({
          kind: 'rank_overloaded', rank: r.rank, value: excess, threshold: th.overloadExcess,
          message: `Rank ${r.rank}'s experts process ${pct(excess)} more token assignments than the mean rank's (${pct(r.loadShare)} of the job's expert work): in an expert-parallel job the others wait for it`,
        });
      }
    });
  }
  return out;
}
