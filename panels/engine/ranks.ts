/**
 * A distributed job's ranks over the analysis window, for the Ranks view: each rank's figures
 * (cumulative, carried by the job's updates) differenced against the window's baseline, then
 * judged by the pure functions of src/analysis/ranks.ts.
 */
import type { RankInfo, RankSample } from '../../src/protocol/panel';
import { rankFindings, rankRows, rankTime, skew, timeBasis, type RankFinding, type RankRow, type RankWindow, type TimeBasis } from '../../src/analysis/ranks';

/** What the host said about a job's ranks (its last 'ranks' message). */
export interface JobRanks {
  key: string;
  label: string;
  worldSize: number;
  ranks: RankInfo[];
}

export interface RanksAnalysis {
  label: string;
  worldSize: number;
  /** The layer whose per-expert counts the rows carry, and its width. */
  layer: number;
  experts: number;
  rows: RankRow[];
  findings: RankFinding[];
  /**
   * Slowest rank's time per pass over the median rank's (1: even); NaN when not measured. The time
   * inside each rank's own experts where measured (expert parallel), else the time in MoE blocks.
   */
  timeSkew: number;
  timeBasis: TimeBasis;
  /** Busiest rank's expert load over the median rank's. */
  loadSkew: number;
  /** Seconds the per-expert counts cover: the window, or less when the layer was picked within it. */
  countsSeconds: number;
}

/** The cumulative figures a rank's window starts from: its sample in `snap`, else zero (it joined since). */
interface SnapshotLike {
  ts: number;
  ranks: RankSample[] | null;
  rankLayer: number;
}

const minus = (a: readonly number[] | undefined, b: readonly number[] | undefined): number[] | null =>
  a ? a.map((x, i) => x - (b?.[i] ?? 0)) : null;
const less = (a: number | undefined, b: number | undefined): number | null => (a === undefined ? null : a - (b ?? 0));

export function analyzeRanks(info: JobRanks | undefined, latest: SnapshotLike, base: SnapshotLike, countsBase: SnapshotLike, firstSeen: Map<number, number>): RanksAnalysis {
  const samples = new Map((latest.ranks ?? []).map((r) => [r.handle, r]));
  const baseOf = new Map((base.ranks ?? []).map((r) => [r.handle, r]));
  const countsOf = new Map((countsBase.ranks ?? []).map((r) => [r.handle, r]));
  const layer = latest.rankLayer;
  // Every rank the host named (those that never sent counts too), else those the update carries.
  const known: RankInfo[] = info?.ranks ?? (latest.ranks ?? []).map((r) => ({ handle: r.handle, pid: 0, rank: r.rank, node: '', via: '', status: 'attached', held: [] }));
  const windows: RankWindow[] = known.map((r) => {
    const s = samples.get(r.handle);
    const b = baseOf.get(r.handle);
    const c = countsOf.get(r.handle);
    const since = b?.ts ?? firstSeen.get(r.handle) ?? s?.ts ?? 0;
    return {
      handle: r.handle, rank: r.rank, pid: r.pid, node: r.node, via: r.via, status: r.status, ...(r.message ? { message: r.message } : {}),
      held: r.held[layer] ?? null,
      passes: s ? s.passes - (b?.passes ?? 0) : 0,
      seconds: s ? s.ts - since : 0,
      tokens: s ? s.tokens - (b?.tokens ?? 0) : 0,
      load: s ? s.load - (b?.load ?? 0) : 0,
      // the detail layer's load from the same baseline as its counts
      layerLoad: s ? (countsBase === latest ? 0 : s.layerLoad - (c && countsBase.rankLayer === layer ? c.layerLoad : 0)) : 0,
      timeS: s ? less(s.timeS, b?.timeS) : null,
      expertS: s ? less(s.expertS, b?.expertS) : null,
      // countsBase holds this layer's counts (or is the zero snapshot); it is `latest` itself when the
      // layer was picked since the last update: nothing counted yet.
      counts: s?.counts ? (countsBase === latest ? s.counts.map(() => 0) : minus(s.counts, c?.counts)) : null,
    };
  });
  const rows = rankRows(windows);
  const live = rows.filter((r) => r.status === 'attached');
  const basis = timeBasis(live);
  return {
    label: info?.label ?? 'distributed job',
    worldSize: info?.worldSize ?? rows.length,
    layer,
    experts: Math.max(0, ...rows.map((r) => r.counts?.length ?? 0)),
    rows,
    findings: rankFindings(rows),
    timeSkew: skew(live.map((r) => rankTime(r, basis))),
    timeBasis: basis,
    loadSkew: skew(live.map((r) => r.load)),
    countsSeconds: latest.ts - countsBase.ts,
  };
}
