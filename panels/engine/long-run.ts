/**
 * The analyzer's work for the long-run views, DOM-free (it runs in the analysis worker): a job's
 * routing over a chosen range of its snapshots, the comparison of two such ranges
 * (src/analysis/compare.ts), and the expert placement plan (src/analysis/placement.ts).
 */
import type { LayerInfo } from '../../src/protocol/probe';
import { HEALTH_COLUMNS } from '../../src/protocol/probe';
import { compareRouting, type RoutingComparison, type RoutingRange } from '../../src/analysis/compare';
import { layerLabel } from '../../src/analysis/layers';
import { contiguousPlacement, eplbPlacement, planPlacement, PlacementError, type Placement } from '../../src/analysis/placement';
import type { Snapshot, TokenRow } from './analyzer';

/** Which part of a job: its analysis window, everything since attach, or [from, to] seconds since its first snapshot. */
export type RangeSpec = { kind: 'window' } | { kind: 'all' } | { kind: 'span'; from: number; to: number };

/** What the analyzer holds of a job, as the long-run functions read it. */
export interface JobSnapshots {
  pid: number;
  widths: number[];
  offsets: number[];
  infos: LayerInfo[];
  topK: number[];
  /** Kept snapshots, oldest first, the latest last. */
  snapshots: Snapshot[];
  /** Zero counts at attach, when the kept snapshots still start there. */
  zero: Snapshot | null;
  /** Probe time of the job's first snapshot. */
  t0: number;
  tokens: TokenRow[];
  /** The baseline of the current analysis window. */
  windowBase: Snapshot;
}

/** A range resolved to its two snapshots, with the routing between them. */
export interface ResolvedRange extends RoutingRange {
  counts: Float64Array;
  pid: number;
  /** Seconds since the job's first snapshot, and the probe clock, of the range's ends. */
  from: number;
  to: number;
  fromTs: number;
  toTs: number;
  passes: number;
}

const HC = HEALTH_COLUMNS.length;
const H_TOKENS = HEALTH_COLUMNS.indexOf('logit_tokens');
const H_ENTROPY = HEALTH_COLUMNS.indexOf('entropy_sum');
const H_NAN = HEALTH_COLUMNS.indexOf('nan');
const H_INF = HEALTH_COLUMNS.indexOf('inf');

/** The last kept snapshot at or before probe time `ts` (the first one if none is). */
function at(job: JobSnapshots, ts: number): Snapshot {
  let found = job.snapshots[0]!;
  for (const s of job.snapshots) {
    if (s.ts <= ts + 1e-9) found = s;
    else break;
  }
  return found;
}

export function resolveRange(job: JobSnapshots, spec: RangeSpec): ResolvedRange | null {
  const latest = job.snapshots[job.snapshots.length - 1];
  if (!latest) return null;
  let base: Snapshot;
  let end: Snapshot = latest;
  if (spec.kind === 'window') base = job.windowBase;
  else if (spec.kind === 'all') base = job.zero ?? job.snapshots[0]!;
  else {
    base = spec.from <= 0 && job.zero ? job.zero : at(job, job.t0 + spec.from);
    end = at(job, job.t0 + Math.max(spec.from, spec.to));
  }
  const L = job.widths.length;
  const counts = new Float64Array(end.counts.length);
  for (let i = 0; i < counts.length; i++) counts[i] = end.counts[i]! - base.counts[i]!;
  const tokens: number[] = [];
  const routerEntropy: number[] = [];
  const msPerPass: number[] = [];
  const passes = end.passes - base.passes;
  for (let l = 0; l < L; l++) {
    const off = job.offsets[l]!;
    const e = job.widths[l]!;
    let assignments = 0;
    for (let i = off; i < off + e; i++) assignments += counts[i]!;
    tokens.push(end.tokens && base.tokens ? end.tokens[l]! - base.tokens[l]! : assignments / Math.max(1, job.topK[l] ?? 1));
    const h = (col: number) => (end.health && base.health ? end.health[l * HC + col]! - base.health[l * HC + col]! : NaN);
    const measured = h(H_TOKENS);
    routerEntropy.push(measured > 0 && e > 1 && h(H_NAN) + h(H_INF) === 0 ? h(H_ENTROPY) / measured / Math.log(e) : NaN);
    msPerPass.push(end.timeS && base.timeS && passes > 0 ? (1000 * (end.timeS[l]! - base.timeS[l]!)) / passes : NaN);
  }
  return {
    pid: job.pid, widths: job.widths, labels: job.infos.map((i) => layerLabel(i)), counts, tokens, routerEntropy, msPerPass,
    tokenRows: job.tokens.filter((r) => r.pass > base.passes && r.pass <= end.passes),
    from: base.ts - job.t0, to: end.ts - job.t0, fromTs: base.ts, toTs: end.ts, passes,
  };
}

export interface ComparisonResult extends RoutingComparison {
  a: Omit<ResolvedRange, 'counts' | 'tokenRows'>;
  b: Omit<ResolvedRange, 'counts' | 'tokenRows'>;
}

export function compareRanges(a: ResolvedRange, b: ResolvedRange): ComparisonResult {
  const strip = ({ counts: _c, tokenRows: _t, ...rest }: ResolvedRange) => rest;
  return { ...compareRouting(a, b), a: strip(a), b: strip(b) };
}

export interface LayerPlan {
  layer: number;
  label: string;
  experts: number;
  /** Assignments per expert the plan is made from. */
  load: number[];
  /** Expert e on device e / (E / G), no replicas; null when E is not a multiple of G. */
  contiguous: Placement | null;
  eplb: Placement | null;
  ours: Placement | null;
  /** Why no plan could be made for this layer (e.g. slots that the devices cannot share equally). */
  error?: string;
}

export interface PlanResult {
  pid: number;
  devices: number;
  redundant: number;
  /** The range the loads are from. */
  from: number;
  to: number;
  passes: number;
  layers: LayerPlan[];
}

/** Placement plans for the given layers (default all) from the loads over `range`. */
export function planRange(job: JobSnapshots, range: ResolvedRange, devices: number, redundant: number, layers?: number[]): PlanResult {
  const out: LayerPlan[] = [];
  for (const l of layers ?? job.widths.map((_, i) => i)) {
    const e = job.widths[l];
    if (e === undefined) continue;
    const off = job.offsets[l]!;
    const load = Array.from(range.counts.subarray(off, off + e));
    const plan: LayerPlan = { layer: l, label: range.labels[l]!, experts: e, load, contiguous: null, eplb: null, ours: null };
    try {
      plan.contiguous = e % devices === 0 ? contiguousPlacement(load, devices) : null;
      plan.eplb = eplbPlacement(load, devices, redundant);
      plan.ours = planPlacement(load, devices, redundant);
    } catch (err) {
      plan.error = err instanceof PlacementError ? err.message : String(err);
    }
    out.push(plan);
  }
  return { pid: job.pid, devices, redundant, from: range.from, to: range.to, passes: range.passes, layers: out };
}

/**
 * The plan as a file: per layer the placement, the predicted device loads and balancedness before
 * (contiguous), with EPLB's greedy, and with ours; and under "sglang" the maps in the layout of
 * SGLang's --init-expert-location (physical_to_logical_map [layers][slots], each layer's slots device
 * after device). The maps are ours; not tested against SGLang itself here.
 */
export function planJson(plan: PlanResult, model: { class: string; pid: number }): string {
  const ok = plan.layers.filter((l) => l.ours);
  return JSON.stringify({
    format: 'moe-devtools-placement', version: 1, model: model.class, pid: model.pid,
    devices: plan.devices, redundant: plan.redundant, slotsPerDevice: ok[0]?.ours?.slotsPerDevice ?? null,
    loads: { from_s: plan.from, to_s: plan.to, passes: plan.passes, unit: 'token-expert assignments' },
    layers: plan.layers.map((l) => ({
      layer: l.layer, name: l.label, experts: l.experts, load: l.load, error: l.error,
      balancedness: { contiguous: l.contiguous?.balancedness ?? null, eplb: l.eplb?.balancedness ?? null, ours: l.ours?.balancedness ?? null },
      device_load: { contiguous: l.contiguous?.deviceLoad ?? null, eplb: l.eplb?.deviceLoad ?? null, ours: l.ours?.deviceLoad ?? null },
      physical_to_logical: l.ours?.slots ?? null,
      logical_count: l.ours?.replicas ?? null,
    })),
    sglang: ok.length === plan.layers.length ? { physical_to_logical_map: ok.map((l) => l.ours!.slots) } : null,
  }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
}
