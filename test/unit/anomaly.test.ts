/**
 * Change detection on synthetic jobs whose truth is known: a routing shift in chosen layers at a
 * chosen second, a slow drift, NaN logits appearing, router entropy and time per pass stepping;
 * and hours of stationary routing whose inputs vary from block to block (overdispersed, as real
 * text is) that must give no finding at all.
 */
import { describe, expect, it } from 'vitest';
import { AnomalyDetector, robustSpread, samplingJs, type Anomaly, type AnomalyLayer } from '../../src/analysis/anomaly';
import { HEALTH_COLUMNS } from '../../src/protocol/probe';
import { prng } from './prng';

const HC = HEALTH_COLUMNS.length;

interface SimLayer {
  /** Expert distribution at time t (s). */
  p: (t: number) => number[];
  entropy?: (t: number) => number;
  msPerPass?: (t: number) => number;
  nanAt?: number;
}

/**
 * Cumulative snapshots of a job at `hz` snapshots/s, `tokens` tokens per snapshot per layer, top-1.
 * Every `docSeconds` the inputs change "topic": each layer's distribution is tilted by a random
 * factor per expert (exp(N(0, tilt))), which makes blocks vary more than sampling alone would.
 */
function simulate(layers: SimLayer[], seconds: number, opts: { hz?: number; tokens?: number; seed?: number; docSeconds?: number; tilt?: number } = {}) {
  const { hz = 10, tokens = 60, seed = 1, docSeconds = 2, tilt = 0.15 } = opts;
  const rand = prng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const widths = layers.map((l) => l.p(0).length);
  const total = widths.reduce((a, b) => a + b, 0);
  const counts = new Float64Array(total);
  const tok = new Float64Array(layers.length);
  const health = new Float64Array(layers.length * HC);
  const timeS = new Float64Array(layers.length);
  let tilts = widths.map((w) => Array.from({ length: w }, () => 1));
  const snaps = [];
  const t0 = 1_700_000_000;
  for (let i = 0; i <= seconds * hz; i++) {
    const t = i / hz;
    if (i % Math.round(docSeconds * hz) === 0) tilts = widths.map((w) => Array.from({ length: w }, () => Math.exp(tilt * normal())));
    let off = 0;
    layers.forEach((layer, l) => {
      const base = layer.p(t).map((x, e) => x * tilts[l]![e]!);
      const sum = base.reduce((a, b) => a + b, 0);
      // multinomial draw of `tokens` by sequential binomials (normal approximation, rounded)
      let left = tokens;
      let mass = 1;
      for (let e = 0; e < base.length; e++) {
        const q = base[e]! / sum;
        let n: number;
        if (e === base.length - 1) n = left;
        else {
          const pr = Math.min(1, q / mass);
          n = Math.max(0, Math.min(left, Math.round(left * pr + Math.sqrt(left * pr * (1 - pr)) * normal())));
        }
        counts[off + e]! += n;
        left -= n;
        mass -= q;
      }
      off += base.length;
      tok[l]! += tokens;
      health[l * HC + 0]! += tokens;
      health[l * HC + 1]! += tokens * (layer.entropy?.(t) ?? 0.6) * Math.log(base.length) * (1 + 0.01 * normal());
      health[l * HC + 2]! += tokens * 9 * (1 + 0.02 * normal());
      if (layer.nanAt !== undefined && t >= layer.nanAt) health[l * HC + 3]! += 2;
      timeS[l]! += ((layer.msPerPass?.(t) ?? 1) / 1000) * (1 + 0.05 * normal());
    });
    snaps.push({ ts: t0 + t, passes: i, counts: Float64Array.from(counts), tokens: Float64Array.from(tok), health: Float64Array.from(health), timeS: Float64Array.from(timeS) });
  }
  return { snaps, t0 };
}

const info = (n: number, experts = 8): AnomalyLayer[] => Array.from({ length: n }, (_, i) => ({ label: `model.layers.${i}.mlp (layer ${i})`, experts, topK: 1 }));
const flat = (e: number) => () => Array.from({ length: e }, () => 1 / e);
const skewed = (e: number, alpha: number) => () => {
  const w = Array.from({ length: e }, (_, i) => 1 / (i + 1) ** alpha);
  const s = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / s);
};

function run(layers: SimLayer[], seconds: number, opts: Parameters<typeof simulate>[2] = {}) {
  const { snaps, t0 } = simulate(layers, seconds, opts);
  const det = new AnomalyDetector(info(layers.length, layers[0]!.p(0).length));
  const found: Anomaly[] = [];
  for (const s of snaps) found.push(...det.push(s));
  return { found, t0 };
}

describe('anomaly detection', () => {
  it('robust spread: median and 1.4826 x MAD', () => {
    // 1 2 3 4 100: median 3, deviations 2 1 0 1 97 -> MAD 1
    expect(robustSpread([1, 2, 3, 4, 100])).toEqual({ median: 3, spread: 1.4826 });
    // (E - 1) / (8 N ln 2): 7 / (8 x 1000 x ln 2)
    expect(samplingJs(1000, 8)).toBeCloseTo(7 / (8000 * Math.LN2), 15);
  });

  it('gives no finding on two hours of stationary routing with varying inputs', () => {
    const layers: SimLayer[] = [{ p: flat(8) }, { p: skewed(8, 1) }, { p: skewed(8, 0.5) }, { p: flat(8) }];
    const { found } = run(layers, 7200);
    expect(found).toEqual([]);
  }, 60_000); // about 2 s alone; the whole unit suite shares 2 cores

  it('still catches a shift in a job whose inputs swing widely (its own, higher bar)', () => {
    // topics of 3 s tilting each expert by exp(N(0, 0.2)): a few blocks in a row differ from the
    // reference more than sampling alone would, so the bar is raised to 1.5x the reference's own
    // largest swing; a reversal of layer 2's routing at 300 s is far beyond it
    const before = skewed(8, 1)();
    const after = [...before].reverse();
    const { found, t0 } = run([{ p: flat(8) }, { p: () => before }, { p: (t) => (t < 300 ? before : after) }, { p: flat(8) }], 400, { docSeconds: 3, tilt: 0.2, seed: 3 });
    const routing = found.filter((f) => f.metric === 'routing' && f.detectedTs - t0 > 300);
    expect(routing.map((f) => f.layer)).toEqual([2]);
    expect(routing[0]!.ts - t0).toBeGreaterThanOrEqual(297);
    expect(routing[0]!.detectedTs - t0).toBeLessThan(310);
    expect(routing[0]!.value).toBeGreaterThan(0.1);
  });

  it('reports a routing shift at the second it happened, in the shifted layers only', () => {
    const before = skewed(8, 1)();
    const after = [...before].reverse();
    const shifted = (t: number) => (t < 120 ? before : after);
    const layers: SimLayer[] = [{ p: () => before }, { p: shifted }, { p: () => before }, { p: shifted }];
    const { found, t0 } = run(layers, 200);
    const routing = found.filter((f) => f.metric === 'routing');
    expect(routing.map((f) => f.layer).sort()).toEqual([1, 3]);
    for (const f of routing) {
      expect(f.ts - t0).toBeGreaterThanOrEqual(119);
      expect(f.ts - t0).toBeLessThanOrEqual(121);
      expect(f.detectedTs - t0).toBeLessThan(125); // within 5 s
      expect(f.value).toBeGreaterThan(0.1);
      expect(f.message).toMatch(/routing shifted, Jensen-Shannon divergence 0\.\d{3} bits/);
      // the biggest movers: expert 0 (most used before) and expert 7 (most used after)
      expect(f.experts!.slice(0, 2).map((m) => m.expert).sort()).toEqual([0, 7]);
    }
    // nothing else changed, so nothing else is reported (one finding per shift: the new routing is the new reference)
    expect(found.filter((f) => f.metric !== 'routing')).toEqual([]);
  });

  it('catches a slow drift once it is material, not before', () => {
    const p0 = skewed(8, 1)();
    const p1 = [...p0].reverse();
    // linear from p0 (t = 60 s) to p1 (t = 660 s)
    const drifting = (t: number) => {
      const a = Math.min(1, Math.max(0, (t - 60) / 600));
      return p0.map((x, e) => (1 - a) * x + a * p1[e]!);
    };
    const { found, t0 } = run([{ p: drifting }, { p: () => p0 }], 800);
    const routing = found.filter((f) => f.metric === 'routing');
    expect(routing.length).toBeGreaterThan(0);
    expect(routing.every((f) => f.layer === 0)).toBe(true);
    // the first finding comes only after the drift made the distribution differ by >= 0.02 bits
    expect(routing[0]!.value).toBeGreaterThanOrEqual(0.02);
    expect(routing[0]!.detectedTs - t0).toBeGreaterThan(60);
    expect(routing[0]!.detectedTs - t0).toBeLessThan(660);
  });

  it('reports NaN logits the block they appear, in their layer', () => {
    const { found, t0 } = run([{ p: flat(8) }, { p: flat(8), nanAt: 90.05 }], 120);
    expect(found.map((f) => [f.metric, f.layer])).toEqual([['nan_inf', 1]]);
    expect(found[0]!.ts - t0).toBeGreaterThan(88);
    expect(found[0]!.detectedTs - t0).toBeLessThan(92);
    expect(found[0]!.message).toMatch(/NaN and 0 Inf router logits appeared/);
  });

  it('reports router entropy and time per pass stepping, with the direction', () => {
    const { found, t0 } = run([
      { p: flat(8), entropy: (t) => (t < 100 ? 0.6 : 0.4) },
      { p: flat(8), msPerPass: (t) => (t < 100 ? 1 : 4) },
      { p: flat(8) },
      { p: flat(8) },
    ], 150);
    const entropy = found.find((f) => f.metric === 'router_entropy');
    const time = found.find((f) => f.metric === 'time');
    expect(entropy?.layer).toBe(0);
    expect(entropy?.message).toMatch(/normalized router entropy fell from 0\.(59\d|60\d) to 0\.(39\d|40\d)/);
    expect(entropy!.ts - t0).toBeGreaterThanOrEqual(99);
    expect(time?.layer).toBe(1);
    // layer 1's share of the MoE time: 1 / 4 = 25% before, 4 / 7 = 57.1% after; the others' shares
    // fall with it, which is not news (time is watched upwards only)
    expect(time?.message).toMatch(/share of the time in MoE blocks rose from (24|25)\.\d% to (56|57)\.\d% \([34]\.\d+ ms per pass now\)/);
    expect(found.filter((f) => f.metric === 'time').map((f) => f.layer)).toEqual([1]);
    expect(found.filter((f) => f.metric === 'routing')).toEqual([]);
  });

  it('gives the same findings when the caller reuses its arrays from one snapshot to the next', () => {
    const before = skewed(8, 1)();
    const after = [...before].reverse();
    const { snaps } = simulate([{ p: (t) => (t < 60 ? before : after) }], 90);
    const fresh = new AnomalyDetector(info(1));
    const expected = snaps.flatMap((s) => fresh.push(s));
    const reused = new AnomalyDetector(info(1));
    const buf = { ...snaps[0]!, counts: new Float64Array(8), tokens: new Float64Array(1), health: new Float64Array(HC), timeS: new Float64Array(1) };
    const got = snaps.flatMap((s) => {
      buf.counts.set(s.counts);
      buf.tokens.set(s.tokens);
      buf.health.set(s.health);
      buf.timeS.set(s.timeS);
      return reused.push({ ...buf, ts: s.ts, passes: s.passes });
    });
    expect(expected.length).toBeGreaterThan(0);
    expect(got).toEqual(expected);
  });

  it('starts over when the counters go back (a new attach)', () => {
    const { snaps } = simulate([{ p: flat(8) }], 40);
    const det = new AnomalyDetector(info(1));
    for (const s of snaps) det.push(s);
    // the same job attached again: its counters restart near 0 with a very different routing;
    // that is a new reference, not a shift
    const again = simulate([{ p: skewed(8, 2) }], 40, { seed: 5 }).snaps;
    const found = again.flatMap((s) => det.push(s));
    expect(found).toEqual([]);
  });
});
