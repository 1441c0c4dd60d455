/**
 * Online change detection on a job's routing: when did a layer's expert distribution, router
 * entropy, router z-loss or time per pass change, or NaN/Inf logits appear, against how the layer
 * behaved before.
 *
 * Method (per layer, per quantity):
 * 1. Blocks. Cumulative snapshots are cut into blocks of at least `blockSeconds` and at least
 *    `blockTokens` tokens (a block of a slow job closes after `maxBlockSeconds` whatever it holds),
 *    so every statistic is taken over a comparable amount of routing.
 * 2. Reference. The first `referenceBlocks` blocks (after attach, and again after each finding)
 *    are the reference: the pooled expert distribution q, and the spread of each statistic over
 *    those blocks (median and MAD), which measures how much the job's own workload moves the
 *    statistic from block to block (token sampling noise and real variation of the inputs alike).
 *    The reference is fixed until a finding: a slow drift accumulates instead of being absorbed.
 * 3. Statistic. Routing: the Jensen-Shannon divergence (bits) of each block's expert distribution
 *    from q. Router entropy and z-loss: the block's mean. Time: the layer's share of the time spent
 *    in all MoE blocks over the block (so a machine that slows down as a whole is not a finding).
 * 4. CUSUM (Page 1954) on the statistic standardized by the reference spread,
 *    S = max(0, S + (x - median) / spread - k), one-sided upwards for the divergence, both ways for
 *    the others; an alarm when S > h. The change is dated at the start of the block where S last
 *    left 0, and reported when it was detected.
 * 5. Effect size. An alarm becomes a finding only if the change is material: the routing of the
 *    blocks since the change, pooled, differs from q by at least `minJs` bits, by 4x the
 *    divergence that token sampling alone would give at that many assignments
 *    ((E - 1) / (8 N ln 2) bits for N assignments over E experts), and by 1.5x the most that any
 *    `persistBlocks` consecutive reference blocks differed from the rest of the reference (the
 *    job's own swings at that time scale: a job whose inputs vary a lot sets its own, higher bar);
 *    entropy by `minEntropyChange` (normalized, absolute), z-loss and time by the relative changes
 *    `minZLossChange` and `minTimeChange`, each also beyond 1.5x the reference's own largest
 *    swing. This keeps statistically clear but ordinary moves of a job's routing quiet.
 * NaN/Inf: any non-finite router logit in a layer whose reference blocks had none is a finding
 * at once (one per layer until a full reference of clean blocks has passed again).
 *
 * Pure and incremental: push() each cumulative snapshot (as the probe sends them, since attach)
 * and it returns the findings it completes (it copies what it keeps, once a block). Cost per snapshot is O(1) except at a block's end,
 * O(sum of widths). Used by the host (live and stored with the session) and the command line.
 */
import type { AnomalyFinding, AnomalyMetric } from '../protocol/panel';
import { HEALTH_COLUMNS } from '../protocol/probe';
import { jsDivergence, shareChanges } from './divergence';

export { ANOMALY_METRICS, type AnomalyMetric } from '../protocol/panel';
/** A finding (the protocol's AnomalyFinding). */
export type Anomaly = AnomalyFinding;

export interface AnomalySettings {
  blockSeconds: number;
  blockTokens: number;
  maxBlockSeconds: number;
  referenceBlocks: number;
  /** CUSUM slack k, in reference spreads. */
  cusumSlack: number;
  /** CUSUM decision threshold h, in reference spreads. */
  cusumThreshold: number;
  /** Blocks a change must last before it is reported: one odd block (an unusual input) is not a shift. */
  persistBlocks: number;
  /** Least Jensen-Shannon divergence (bits) of the changed routing from the reference. */
  minJs: number;
  /** Least change of mean normalized router entropy (absolute, of [0, 1]). */
  minEntropyChange: number;
  /** Least relative change of mean router z-loss. */
  minZLossChange: number;
  /** Least relative change of a layer's share of the time spent in all MoE blocks. */
  minTimeChange: number;
}

export const DEFAULT_ANOMALY_SETTINGS: AnomalySettings = {
  blockSeconds: 1,
  blockTokens: 256,
  maxBlockSeconds: 10,
  referenceBlocks: 20,
  cusumSlack: 1,
  cusumThreshold: 10,
  persistBlocks: 3,
  minJs: 0.02,
  minEntropyChange: 0.05,
  minZLossChange: 0.5,
  minTimeChange: 0.5,
};

/** What the detector needs to know of a layer. */
export interface AnomalyLayer {
  label: string;
  experts: number;
  topK: number;
}

/** A cumulative snapshot since attach (the fields of a counts frame, decoded). */
export interface CumulativeSnapshot {
  /** Probe clock, seconds since the epoch. */
  ts: number;
  passes: number;
  /** Assignments per (layer, expert), layer after layer. */
  counts: ArrayLike<number>;
  /** Tokens per layer; null: counts / top-k. */
  tokens: ArrayLike<number> | null;
  /** [layers x HEALTH_COLUMNS] (protocol/probe.ts); null when not measured. */
  health: ArrayLike<number> | null;
  /** Seconds inside each MoE block; null when not measured. */
  timeS: ArrayLike<number> | null;
}

/**
 * A change must exceed the largest swing the reference itself showed over as many blocks as a
 * change must last, by this factor: a job whose inputs vary a lot (one prompt of code, then one of
 * docstrings) sets its own, higher bar; a steady one keeps the fixed minimums.
 */
const NATURAL_MARGIN = 1.5;

const HC = HEALTH_COLUMNS.length;
const H_TOKENS = HEALTH_COLUMNS.indexOf('logit_tokens');
const H_ENTROPY = HEALTH_COLUMNS.indexOf('entropy_sum');
const H_ZLOSS = HEALTH_COLUMNS.indexOf('zloss_sum');
const H_NAN = HEALTH_COLUMNS.indexOf('nan');
const H_INF = HEALTH_COLUMNS.indexOf('inf');

/** Median and scaled median absolute deviation (a standard deviation for normal data, robust to outliers). */
export function robustSpread(values: number[]): { median: number; spread: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = (s: number[]) => (s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2);
  const median = mid(sorted);
  const mad = mid(sorted.map((v) => Math.abs(v - median)).sort((a, b) => a - b));
  return { median, spread: 1.4826 * mad };
}

/** Expected Jensen-Shannon divergence (bits) of N multinomial draws over E categories from their own distribution. */
export function samplingJs(assignments: number, experts: number): number {
  return assignments > 0 ? (experts - 1) / (8 * assignments * Math.LN2) : Infinity;
}

/** One block: the difference of two cumulative snapshots. */
interface Block {
  from: number;
  to: number;
  passes: number;
  counts: Float64Array;
  tokens: Float64Array;
  health: Float64Array | null;
  timeS: Float64Array | null;
}

/** Page's CUSUM on a standardized scalar, one- or two-sided, with its reference learned from the first blocks. */
class Cusum {
  private reference: number[] = [];
  private refFrom = NaN;
  private refTo = NaN;
  median = NaN;
  spread = NaN;
  /** The most the median of `persist` consecutive reference blocks strayed from the reference median. */
  naturalSwing = 0;
  private up = 0;
  private down = 0;
  /** The blocks since each sum last was 0: when the change began, and its size. */
  private upRun: Array<{ x: number; from: number }> = [];
  private downRun: Array<{ x: number; from: number }> = [];

  constructor(
    private readonly need: number,
    private readonly k: number,
    private readonly h: number,
    private readonly persist: number,
    private readonly twoSided: boolean,
    /** Least spread, from the reference median: keeps a near-constant reference from making noise look huge. */
    private readonly floor: (median: number) => number,
  ) {}

  get learning(): boolean {
    return this.reference.length < this.need;
  }

  /** Blocks since the upward sum last was 0 (0 when it is 0 now). */
  get upRunLength(): number {
    return this.upRun.length;
  }

  get referenceSpan(): [number, number] {
    return [this.refFrom, this.refTo];
  }

  /** Learn a new reference from the next blocks. */
  reset(): void {
    this.reference = [];
    this.median = NaN;
    this.spread = NaN;
    this.naturalSwing = 0;
    this.up = this.down = 0;
    this.upRun = [];
    this.downRun = [];
  }

  /** Add a block's value; returns the run (the values since the change began) when a sum crosses h. */
  push(x: number, from: number, to: number): { direction: 'up' | 'down'; run: Array<{ x: number; from: number }> } | null {
    if (this.learning) {
      if (!this.reference.length) this.refFrom = from;
      this.reference.push(x);
      this.refTo = to;
      if (!this.learning) {
        const r = robustSpread(this.reference);
        this.median = r.median;
        this.spread = Math.max(r.spread, this.floor(r.median));
        this.naturalSwing = 0;
        for (let i = 0; i + this.persist <= this.reference.length; i++) {
          const m = robustSpread(this.reference.slice(i, i + this.persist)).median;
          this.naturalSwing = Math.max(this.naturalSwing, Math.abs(m - this.median));
        }
      }
      return null;
    }
    const z = (x - this.median) / this.spread;
    this.up = Math.max(0, this.up + z - this.k);
    if (this.up > 0) this.upRun.push({ x, from });
    else this.upRun = [];
    if (this.twoSided) {
      this.down = Math.max(0, this.down - z - this.k);
      if (this.down > 0) this.downRun.push({ x, from });
      else this.downRun = [];
    }
    if (this.up > this.h && this.upRun.length >= this.persist) return { direction: 'up', run: this.upRun };
    if (this.twoSided && this.down > this.h && this.downRun.length >= this.persist) return { direction: 'down', run: this.downRun };
    return null;
  }

  /** After an alarm judged immaterial: start that sum over, so the same small shift is not judged block after block. */
  clearAlarm(direction: 'up' | 'down'): void {
    if (direction === 'up') {
      this.up = 0;
      this.upRun = [];
    } else {
      this.down = 0;
      this.downRun = [];
    }
  }
}

interface LayerState {
  info: AnomalyLayer;
  offset: number;
  /** Pooled reference counts, and each reference block's counts (for the leave-one-out spread). */
  refCounts: Float64Array;
  refBlocks: Float64Array[];
  refFrom: number;
  refTo: number;
  routing: Cusum;
  /** Counts of the blocks since the routing CUSUM left 0 (for the effect size). */
  run: Float64Array[];
  /** The largest divergence of `persistBlocks` consecutive reference blocks from the rest of the reference. */
  naturalJs: number;
  entropy: Cusum;
  zloss: Cusum;
  time: Cusum;
  /** Blocks in a row without NaN/Inf logits; a NaN/Inf finding needs a reference's worth first. */
  cleanBlocks: number;
}

export class AnomalyDetector {
  private readonly s: AnomalySettings;
  private readonly layers: LayerState[];
  private blockStart: CumulativeSnapshot | null = null;
  /** Snapshots are cumulative since attach; a snapshot with fewer passes means a new attach: start over. */
  private lastPasses = -1;

  constructor(layers: AnomalyLayer[], settings: Partial<AnomalySettings> = {}) {
    this.s = { ...DEFAULT_ANOMALY_SETTINGS, ...settings };
    let offset = 0;
    this.layers = layers.map((info) => {
      const state = this.freshLayer(info, offset);
      offset += info.experts;
      return state;
    });
  }

  get settings(): AnomalySettings {
    return this.s;
  }

  private freshLayer(info: AnomalyLayer, offset: number): LayerState {
    const s = this.s;
    const cusum = (twoSided: boolean, floor: (m: number) => number) => new Cusum(s.referenceBlocks, s.cusumSlack, s.cusumThreshold, s.persistBlocks, twoSided, floor);
    return {
      info, offset,
      refCounts: new Float64Array(info.experts), refBlocks: [], refFrom: NaN, refTo: NaN,
      // The divergence's spread is at least a quarter of its median (sampling noise alone varies that much).
      routing: cusum(false, (m) => Math.max(0.25 * m, 1e-4)),
      run: [],
      naturalJs: 0,
      entropy: cusum(true, (m) => Math.max(0.02 * Math.abs(m), 0.002)),
      zloss: cusum(true, (m) => Math.max(0.05 * Math.abs(m), 1e-3)),
      // upwards only: a layer taking a larger share is the news (the others' shares fall with it)
      time: cusum(false, (m) => Math.max(0.1 * Math.abs(m), 1e-3)),
      cleanBlocks: 0,
    };
  }

  /** Take the next cumulative snapshot; returns the findings it completes (usually none). */
  push(snap: CumulativeSnapshot): Anomaly[] {
    if (snap.passes < this.lastPasses) {
      // counters went backwards: a new attach, so everything learned is about another run
      this.layers.forEach((l, i) => (this.layers[i] = this.freshLayer(l.info, l.offset)));
      this.blockStart = null;
    }
    this.lastPasses = snap.passes;
    const start = this.blockStart;
    if (!start) {
      this.blockStart = keep(snap);
      return [];
    }
    const elapsed = snap.ts - start.ts;
    if (elapsed < this.s.blockSeconds) return [];
    const tokens = this.layerTokens(snap, 0) - this.layerTokens(start, 0);
    if (tokens < this.s.blockTokens && elapsed < this.s.maxBlockSeconds) return [];
    this.blockStart = keep(snap);
    if (snap.passes <= start.passes) return []; // nothing ran: no block
    return this.judge(this.block(start, snap));
  }

  private layerTokens(snap: CumulativeSnapshot, layer: number): number {
    if (snap.tokens) return snap.tokens[layer] ?? 0;
    const l = this.layers[layer];
    if (!l) return 0;
    let t = 0;
    for (let i = 0; i < l.info.experts; i++) t += snap.counts[l.offset + i]!;
    return t / Math.max(1, l.info.topK);
  }

  private block(a: CumulativeSnapshot, b: CumulativeSnapshot): Block {
    const total = b.counts.length;
    const counts = new Float64Array(total);
    for (let i = 0; i < total; i++) counts[i] = b.counts[i]! - a.counts[i]!;
    const tokens = new Float64Array(this.layers.length);
    for (let l = 0; l < this.layers.length; l++) tokens[l] = this.layerTokens(b, l) - this.layerTokens(a, l);
    let health: Float64Array | null = null;
    if (a.health && b.health && a.health.length === b.health.length) {
      health = new Float64Array(b.health.length);
      for (let i = 0; i < health.length; i++) health[i] = b.health[i]! - a.health[i]!;
    }
    let timeS: Float64Array | null = null;
    if (a.timeS && b.timeS && a.timeS.length === b.timeS.length) {
      timeS = new Float64Array(b.timeS.length);
      for (let i = 0; i < timeS.length; i++) timeS[i] = b.timeS[i]! - a.timeS[i]!;
    }
    return { from: a.ts, to: b.ts, passes: b.passes - a.passes, counts, tokens, health, timeS };
  }

  private judge(block: Block): Anomaly[] {
    const found: Anomaly[] = [];
    for (let l = 0; l < this.layers.length; l++) {
      const layer = this.layers[l]!;
      const counts = block.counts.subarray(layer.offset, layer.offset + layer.info.experts);
      const routing = this.judgeRouting(l, layer, counts, block);
      if (routing) found.push(routing);
      found.push(...this.judgeHealth(l, layer, block));
    }
    return found;
  }

  private judgeRouting(l: number, layer: LayerState, counts: Float64Array, block: Block): Anomaly | null {
    let sum = 0;
    for (let i = 0; i < counts.length; i++) sum += counts[i]!;
    if (!(sum > 0)) return null;
    if (layer.routing.learning) {
      if (!layer.refBlocks.length) layer.refFrom = block.from;
      layer.refTo = block.to;
      layer.refBlocks.push(Float64Array.from(counts));
      for (let i = 0; i < counts.length; i++) layer.refCounts[i] += counts[i]!;
      if (layer.refBlocks.length === this.s.referenceBlocks) {
        // leave-one-out: each reference block against the pool of the others
        const rest = new Float64Array(counts.length);
        for (const b of layer.refBlocks) {
          for (let i = 0; i < rest.length; i++) rest[i] = layer.refCounts[i]! - b[i]!;
          layer.routing.push(jsDivergence(b, rest), layer.refFrom, layer.refTo);
        }
        // how far the job's own inputs moved the routing over as many blocks as a change must last
        const m = this.s.persistBlocks;
        const window = new Float64Array(counts.length);
        layer.naturalJs = 0;
        for (let start = 0; start + m <= layer.refBlocks.length; start++) {
          window.fill(0);
          for (let j = start; j < start + m; j++) for (let i = 0; i < window.length; i++) window[i] += layer.refBlocks[j]![i]!;
          for (let i = 0; i < rest.length; i++) rest[i] = layer.refCounts[i]! - window[i]!;
          layer.naturalJs = Math.max(layer.naturalJs, jsDivergence(window, rest) || 0);
        }
        layer.refBlocks = [];
      }
      return null;
    }
    const alarm = layer.routing.push(jsDivergence(counts, layer.refCounts), block.from, block.to);
    // the blocks of the current run (since the CUSUM left 0), for the effect size
    const runLength = layer.routing.upRunLength;
    if (runLength === 0) layer.run = [];
    else {
      layer.run.push(Float64Array.from(counts));
      if (layer.run.length > runLength) layer.run.splice(0, layer.run.length - runLength);
    }
    if (!alarm) return null;
    const pooled = new Float64Array(counts.length);
    for (const b of layer.run) for (let i = 0; i < pooled.length; i++) pooled[i] += b[i]!;
    const js = jsDivergence(pooled, layer.refCounts);
    const noise = samplingJs(total(pooled), layer.info.experts) + samplingJs(total(layer.refCounts), layer.info.experts);
    if (!(js >= this.s.minJs && js >= 4 * noise && js >= NATURAL_MARGIN * layer.naturalJs)) {
      layer.routing.clearAlarm('up');
      layer.run = [];
      return null;
    }
    const movers = shareChanges(layer.refCounts, pooled, 3);
    const anomaly: Anomaly = {
      metric: 'routing', layer: l, label: layer.info.label, ts: alarm.run[0]!.from, detectedTs: block.to, value: js, reference: 0,
      referenceFrom: layer.refFrom, referenceTo: layer.refTo, experts: movers,
      message: `${layer.info.label}: routing shifted, Jensen-Shannon divergence ${js.toFixed(3)} bits from the reference` +
        (movers.length ? ` (${movers.map((m) => `expert ${m.expert} ${pct(m.shareA)} → ${pct(m.shareB)}`).join(', ')})` : ''),
    };
    // the new routing becomes the reference from here on
    layer.routing.reset();
    layer.refCounts = new Float64Array(layer.info.experts);
    layer.refBlocks = [];
    layer.run = [];
    layer.naturalJs = 0;
    return anomaly;
  }

  private judgeHealth(l: number, layer: LayerState, block: Block): Anomaly[] {
    const found: Anomaly[] = [];
    const { info } = layer;
    const h = block.health;
    if (h) {
      const nonFinite = h[l * HC + H_NAN]! + h[l * HC + H_INF]!;
      if (nonFinite > 0) {
        if (layer.cleanBlocks >= this.s.referenceBlocks) {
          found.push({
            metric: 'nan_inf', layer: l, label: info.label, ts: block.from, detectedTs: block.to, value: nonFinite, reference: 0,
            referenceFrom: block.from - layer.cleanBlocks * this.s.blockSeconds, referenceTo: block.from,
            message: `${info.label}: ${fmtCount(h[l * HC + H_NAN]!)} NaN and ${fmtCount(h[l * HC + H_INF]!)} Inf router logits appeared after ${layer.cleanBlocks} clean blocks`,
          });
        }
        layer.cleanBlocks = 0;
      } else {
        layer.cleanBlocks++;
      }
      const measured = h[l * HC + H_TOKENS]!;
      if (measured > 0 && nonFinite === 0) {
        const entropy = info.experts > 1 ? h[l * HC + H_ENTROPY]! / measured / Math.log(info.experts) : NaN;
        if (Number.isFinite(entropy)) {
          const a = this.scalar(layer.entropy, entropy, block, (ref, now) => Math.abs(now - ref) >= this.s.minEntropyChange);
          if (a) found.push(this.scalarAnomaly('router_entropy', l, layer, layer.entropy, a, block, 'normalized router entropy', (v) => v.toFixed(3)));
        }
        const zloss = h[l * HC + H_ZLOSS]! / measured;
        if (Number.isFinite(zloss)) {
          const a = this.scalar(layer.zloss, zloss, block, (ref, now) => Math.abs(now - ref) >= this.s.minZLossChange * Math.abs(ref));
          if (a) found.push(this.scalarAnomaly('z_loss', l, layer, layer.zloss, a, block, 'router z-loss', (v) => v.toFixed(2)));
        }
      }
    }
    if (block.timeS && block.passes > 0) {
      // the layer's share of the time in all MoE blocks: a machine that slows down as a whole
      // (another process, a clock change) moves every layer alike and leaves the shares alone
      let total = 0;
      for (let i = 0; i < block.timeS.length; i++) total += block.timeS[i]!;
      const share = total > 0 ? block.timeS[l]! / total : NaN;
      if (Number.isFinite(share) && share > 0) {
        const a = this.scalar(layer.time, share, block, (ref, now) => Math.abs(now - ref) >= this.s.minTimeChange * Math.abs(ref));
        if (a) {
          const ms = (1000 * block.timeS[l]!) / block.passes;
          const f = this.scalarAnomaly('time', l, layer, layer.time, a, block, 'share of the time in MoE blocks', (v) => `${(100 * v).toFixed(1)}%`);
          f.message += ` (${ms.toFixed(3)} ms per pass now)`;
          found.push(f);
        }
      }
    }
    return found;
  }

  /** Feed a CUSUM; on an alarm whose effect is material returns the run's mean and start, else null. */
  private scalar(c: Cusum, x: number, block: Block, material: (reference: number, now: number) => boolean): { level: number; from: number; direction: 'up' | 'down' } | null {
    const alarm = c.push(x, block.from, block.to);
    if (!alarm) return null;
    // the run's median: the block the change fell in holds some of the old level
    const level = robustSpread(alarm.run.map((r) => r.x)).median;
    // material, and beyond what the reference itself swung over as many blocks
    if (!material(c.median, level) || Math.abs(level - c.median) < NATURAL_MARGIN * c.naturalSwing) {
      c.clearAlarm(alarm.direction);
      return null;
    }
    return { level, from: alarm.run[0]!.from, direction: alarm.direction };
  }

  private scalarAnomaly(metric: AnomalyMetric, l: number, layer: LayerState, c: Cusum, a: { level: number; from: number; direction: 'up' | 'down' }, block: Block, what: string, fmt: (v: number) => string): Anomaly {
    const [referenceFrom, referenceTo] = c.referenceSpan;
    const anomaly: Anomaly = {
      metric, layer: l, label: layer.info.label, ts: a.from, detectedTs: block.to, value: a.level, reference: c.median, referenceFrom, referenceTo,
      message: `${layer.info.label}: ${what} ${a.direction === 'up' ? 'rose' : 'fell'} from ${fmt(c.median)} to ${fmt(a.level)}`,
    };
    c.reset(); // the new level is the reference from here on
    return anomaly;
  }
}

/** A copy of what a snapshot holds: callers may reuse their arrays for the next one. */
function keep(s: CumulativeSnapshot): CumulativeSnapshot {
  const copy = (a: ArrayLike<number> | null) => (a ? Float64Array.from(a) : null);
  return { ts: s.ts, passes: s.passes, counts: Float64Array.from(s.counts), tokens: copy(s.tokens), health: copy(s.health), timeS: copy(s.timeS) };
}

function total(counts: ArrayLike<number>): number {
  let t = 0;
  for (let i = 0; i < counts.length; i++) t += counts[i]!;
  return t;
}

const pct = (share: number) => `${(100 * share).toFixed(1)}%`;
const fmtCount = (n: number) => Math.round(n).toLocaleString('en-US');
