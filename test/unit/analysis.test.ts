/**
 * Routing analyses, checked against cases worked out by hand. Each expected
 * value's arithmetic is written next to it; none is obtained by calling the
 * code under test another way.
 */
import { describe, expect, it } from 'vitest';
import { prng as rng } from './prng';
import {
  DEFAULT_THRESHOLDS,
  balancedness,
  coactivation,
  deadExperts,
  effectiveExperts,
  findings,
  firstExpertRepeatBaseline,
  firstExpertRepeatRate,
  gini,
  loadCV,
  loadEntropy,
  loadStats,
  maxVio,
  normalizedLoadEntropy,
  routerCollapse,
  routerEntropy,
  routerLogitStats,
  routerZLoss,
  smallestJudgeableWindow,
  switchLoadBalancingLoss,
  topExperts,
  topKOverlapBaseline,
  topKOverlapRate,
  topShare,
  vocabularySpecialization,
  windowDelta,
  windowTokens,
  layerHealth,
  type LayerWindow,
} from '../../src/analysis';

const LN2 = 0.6931471805599453;
const LN3 = 1.0986122886681098;
const LN4 = 1.3862943611198906;

describe('load statistics', () => {
  // counts [1, 2, 3, 6]: E = 4, T = 12, mean = 3, max = 6.
  const c = [1, 2, 3, 6];

  it('coefficient of variation uses the population std', () => {
    // deviations -2, -1, 0, 3 -> squares 4, 1, 0, 9 = 14; var = 14/4 = 3.5 (population, /E)
    // std = sqrt(3.5) = 1.8708287; CV = 1.8708287 / 3 = 0.6236096
    // (the sample std, /(E-1), would give sqrt(14/3)/3 = 0.7200823)
    expect(loadCV(c)).toBeCloseTo(0.6236096, 6);
  });

  it('MaxVio and balancedness', () => {
    // MaxVio = (6 - 3) / 3 = 1; balancedness = 3 / 6 = 0.5
    expect(maxVio(c)).toBeCloseTo(1, 12);
    expect(balancedness(c)).toBeCloseTo(0.5, 12);
  });

  it('Gini coefficient, whatever the input order, without modifying it', () => {
    // sorted 1,2,3,6: sum r*x = 1*1 + 2*2 + 3*3 + 4*6 = 38
    // G = 2*38/(4*12) - 5/4 = 1.5833333 - 1.25 = 0.3333333
    // check by pairs: |diffs| 1,2,5,1,4,3 = 16, ordered pairs 32; 32 / (2 * 16 * 3) = 1/3
    expect(gini(c)).toBeCloseTo(1 / 3, 12);
    const shuffled = new Float64Array([6, 1, 3, 2]);
    expect(gini(shuffled)).toBeCloseTo(1 / 3, 12);
    expect(Array.from(shuffled)).toEqual([6, 1, 3, 2]);
    // [1, 2, 3, 4]: sum r*x = 1+4+9+16 = 30; 2*30/(4*10) - 5/4 = 1.5 - 1.25 = 0.25
    expect(gini([4, 3, 2, 1])).toBeCloseTo(0.25, 12);
  });

  it('entropy, normalized entropy and effective experts', () => {
    // p = 1/12, 1/6, 1/4, 1/2
    // H = (1/12)ln12 + (1/6)ln6 + (1/4)ln4 + (1/2)ln2
    //   = 0.0833333*2.4849066 + 0.1666667*1.7917595 + 0.25*1.3862944 + 0.5*0.6931472
    //   = 0.2070756 + 0.2986266 + 0.3465736 + 0.3465736 = 1.1988493
    // H / ln4 = 1.1988493 / 1.3862944 = 0.8647870; exp(H) = e^1.1988493 = 3.3162987
    expect(loadEntropy(c)).toBeCloseTo(1.1988493, 6);
    expect(normalizedLoadEntropy(c)).toBeCloseTo(0.864787, 6);
    expect(effectiveExperts(c)).toBeCloseTo(3.3162987, 6);
  });

  it('even loads: every statistic at its balanced extreme', () => {
    const even = new Int32Array([5, 5, 5, 5]);
    expect(loadCV(even)).toBe(0);
    expect(maxVio(even)).toBe(0);
    expect(balancedness(even)).toBe(1);
    expect(gini(even)).toBeCloseTo(0, 12);
    expect(normalizedLoadEntropy(even)).toBeCloseTo(1, 12);
    expect(effectiveExperts(even)).toBeCloseTo(4, 12);
  });

  it('one expert takes everything: every statistic at its concentrated extreme', () => {
    // [0, 0, 8, 0]: mean 2; deviations -2,-2,6,-2 -> squares 4+4+36+4 = 48; var 12
    // CV = sqrt(12)/2 = sqrt(3) = 1.7320508 (= sqrt(E-1))
    // MaxVio = (8-2)/2 = 3 (= E-1); balancedness = 2/8 = 0.25 (= 1/E)
    // Gini: sorted 0,0,0,8 -> 2*(4*8)/(4*8) - 5/4 = 0.75 (= (E-1)/E); H = 0; exp(H) = 1
    const one = [0, 0, 8, 0];
    expect(loadCV(one)).toBeCloseTo(Math.sqrt(3), 12);
    expect(maxVio(one)).toBe(3);
    expect(balancedness(one)).toBe(0.25);
    expect(gini(one)).toBeCloseTo(0.75, 12);
    expect(loadEntropy(one)).toBe(0);
    expect(normalizedLoadEntropy(one)).toBe(0);
    expect(effectiveExperts(one)).toBe(1);
  });

  it('two of four experts share the load evenly: 2 effective experts', () => {
    // p = 1/2, 1/2, 0, 0: H = ln2; exp(H) = 2; H/ln4 = ln2/(2 ln2) = 0.5
    expect(effectiveExperts([0, 7, 7, 0])).toBeCloseTo(2, 12);
    expect(normalizedLoadEntropy([0, 7, 7, 0])).toBeCloseTo(0.5, 12);
  });

  it('no tokens or no experts: NaN, never "balanced"', () => {
    for (const empty of [[0, 0, 0], []]) {
      expect(loadCV(empty)).toBeNaN();
      expect(maxVio(empty)).toBeNaN();
      expect(balancedness(empty)).toBeNaN();
      expect(gini(empty)).toBeNaN();
      expect(loadEntropy(empty)).toBeNaN();
      expect(normalizedLoadEntropy(empty)).toBeNaN();
      expect(effectiveExperts(empty)).toBeNaN();
      expect(topShare(empty)).toBeNaN();
    }
  });

  it('a single expert counts as even (ln 1 = 0 is not divided by)', () => {
    expect(normalizedLoadEntropy([42])).toBe(1);
    expect(loadCV([42])).toBe(0);
  });

  it('topExperts and topShare: busiest first, ties to the lower index', () => {
    const t = [3, 7, 7, 1]; // T = 18
    expect(topExperts(t, 1)).toEqual([1]);
    expect(topExperts(t, 3)).toEqual([1, 2, 0]);
    expect(topExperts(t, 9)).toEqual([1, 2, 0, 3]);
    expect(topExperts(t, 0)).toEqual([]);
    expect(topShare(t)).toBeCloseTo(7 / 18, 12); // 7/18 = 0.3889
    expect(topShare(t, 2)).toBeCloseTo(14 / 18, 12); // (7+7)/18 = 0.7778
  });

  it('loadStats gives the same numbers in one call, reusing `out`', () => {
    const out = loadStats([1, 2, 3, 6]);
    expect(out.total).toBe(12);
    expect(out.mean).toBe(3);
    expect(out.max).toBe(6);
    expect(out.argmax).toBe(3);
    expect(out.min).toBe(1);
    expect(out.zeroExperts).toBe(0);
    expect(out.cv).toBeCloseTo(0.6236096, 6);
    expect(out.maxVio).toBeCloseTo(1, 12);
    expect(out.balancedness).toBeCloseTo(0.5, 12);
    expect(out.gini).toBeCloseTo(1 / 3, 12);
    expect(out.entropy).toBeCloseTo(1.1988493, 6);
    expect(out.normalizedEntropy).toBeCloseTo(0.864787, 6);
    expect(out.effectiveExperts).toBeCloseTo(3.3162987, 6);

    const again = loadStats([0, 0, 8, 0], out);
    expect(again).toBe(out);
    expect(out.argmax).toBe(2);
    expect(out.zeroExperts).toBe(3);
    expect(out.gini).toBeCloseTo(0.75, 12);

    loadStats([0, 0], out);
    expect(out.total).toBe(0);
    expect(out.zeroExperts).toBe(2);
    expect(out.cv).toBeNaN();
    expect(out.normalizedEntropy).toBeNaN();
  });
});

describe('window size', () => {
  it('tokens = assignments / top-k unless given', () => {
    expect(windowTokens([600, 400, 1000], 2)).toBe(1000); // 2000 assignments / 2
    expect(windowTokens([600, 400, 1000])).toBe(2000);
    expect(windowTokens([600, 400, 1000], 2, 1234)).toBe(1234);
  });

  it('smallest judgeable window = max(minTokens, ceil(minExpected * E / k))', () => {
    expect(smallestJudgeableWindow(8, 2, 1000, 50)).toBe(1000); // 50*8/2 = 200 < 1000
    expect(smallestJudgeableWindow(512, 8, 1000, 50)).toBe(3200); // 50*512/8 = 3200
    expect(smallestJudgeableWindow(512, 1, 1000, 50)).toBe(25600); // 50*512 = 25600
    expect(smallestJudgeableWindow(7, 3, 0, 10)).toBe(24); // 70/3 = 23.33 -> 24
  });
});

describe('windows from cumulative snapshots', () => {
  it('subtracts the older snapshot', () => {
    // [10, 20, 30] - [4, 20, 25] = [6, 0, 5]
    expect(Array.from(windowDelta([10, 20, 30], [4, 20, 25]))).toEqual([6, 0, 5]);
    expect(Array.from(windowDelta([10, 20, 30]))).toEqual([10, 20, 30]);
  });

  it('takes the newer snapshot whole when any counter went down (restart)', () => {
    // 3 < 4: restarted, so the window is [3, 50, 30], not [-1, 30, 5]
    const out = new Float64Array(3);
    expect(windowDelta([3, 50, 30], [4, 20, 25], out)).toBe(out);
    expect(Array.from(out)).toEqual([3, 50, 30]);
  });

  it('rejects mismatched sizes', () => {
    expect(() => windowDelta([1, 2], [1])).toThrow(RangeError);
    expect(() => windowDelta([1, 2], [1, 1], new Float64Array(1))).toThrow(RangeError);
  });
});

describe('router health from the probe sums', () => {
  it('means and the normalized entropy of one layer', () => {
    // columns: logit_tokens, entropy_sum, zloss_sum, nan, inf, dropped
    // layer 1: N = 4, entropy_sum = 4 * ln2 -> mean ln2, / ln4 = 0.5; zloss_sum = 10 -> 2.5
    const block = [0, 0, 0, 0, 0, 0, 4, 4 * LN2, 10, 2, 1, 7];
    const h = layerHealth(block, 1, 4);
    expect(h.logitTokens).toBe(4);
    expect(h.meanEntropy).toBeCloseTo(LN2, 12);
    expect(h.normalizedEntropy).toBeCloseTo(0.5, 12);
    expect(h.zLoss).toBe(2.5);
    expect(h.nanLogits).toBe(2);
    expect(h.infLogits).toBe(1);
    expect(h.droppedTokens).toBe(7);
    // layer 0 measured no tokens: NaN means, which findings ignores
    expect(layerHealth(block, 0, 4).normalizedEntropy).toBeNaN();
    expect(() => layerHealth(block, 2, 4)).toThrow(RangeError);
  });
});

describe('dead experts', () => {
  it('finds experts at zero once the window reaches 1000 tokens', () => {
    // top-1, T = 500+0+300+200 = 1000 tokens >= max(1000, 50*4/1 = 200)
    expect(deadExperts([500, 0, 300, 200])).toEqual([1]);
    expect(deadExperts(new Float64Array([0, 600, 0, 400]))).toEqual([0, 2]);
  });

  it('returns [] when the window is one token too small', () => {
    // 499+0+300+200 = 999 < 1000
    expect(deadExperts([499, 0, 300, 200])).toEqual([]);
  });

  it('counts tokens, not assignments, under top-k', () => {
    // top-2: 1000+0+600+400 = 2000 assignments = 1000 tokens -> judged
    expect(deadExperts([1000, 0, 600, 400], { topK: 2 })).toEqual([1]);
    // 1998 assignments = 999 tokens -> too small
    expect(deadExperts([998, 0, 600, 400], { topK: 2 })).toEqual([]);
  });

  it('minTokens is configurable', () => {
    expect(deadExperts([5, 0, 5], { minTokens: 10, minExpectedPerExpert: 0 })).toEqual([1]);
    expect(deadExperts([5, 0, 4], { minTokens: 10, minExpectedPerExpert: 0 })).toEqual([]);
  });

  it('needs enough expected tokens per expert when there are many experts', () => {
    // E = 512, top-1, 1000 tokens all on expert 0: 1000*1/512 = 1.95 expected per expert < 50
    const counts = new Float64Array(512);
    counts[0] = 1000;
    expect(deadExperts(counts)).toEqual([]);
    // judged on minTokens alone, experts 1..511 are dead
    const dead = deadExperts(counts, { minExpectedPerExpert: 0 });
    expect(dead.length).toBe(511);
    expect(dead[0]).toBe(1);
    expect(dead[510]).toBe(511);
  });

  it('uses the caller\'s token count when given', () => {
    expect(deadExperts([5, 0, 5], { tokens: 5000 })).toEqual([1]);
    expect(deadExperts([5000, 0, 5000], { tokens: 500 })).toEqual([]);
  });

  it('no zero-count expert, no experts, no tokens: []', () => {
    expect(deadExperts([400, 300, 300])).toEqual([]);
    expect(deadExperts([])).toEqual([]);
    expect(deadExperts([0, 0, 0])).toEqual([]);
  });
});

describe('router collapse', () => {
  it('fires on both tests when one expert takes 95% of 1000 tokens', () => {
    // [950, 20, 20, 10], E = 4, top-1. Top share = 950/1000 = 0.95 >= 0.9.
    // H = .95 ln(1/.95) + 2*.02 ln(50) + .01 ln(100)
    //   = .95*0.0512933 + .04*3.9120230 + .01*4.6051702 = 0.0487286 + 0.1564809 + 0.0460517 = 0.2512613
    // H/ln4 = 0.2512613/1.3862944 = 0.1812467 < 0.5
    const v = routerCollapse([950, 20, 20, 10]);
    expect(v.judged).toBe(true);
    expect(v.collapsed).toBe(true);
    expect(v.reason).toBe('both');
    expect(v.topShare).toBeCloseTo(0.95, 12);
    expect(v.normalizedEntropy).toBeCloseTo(0.1812467, 6);
    expect(v.experts).toEqual([0]);
  });

  it('fires on entropy alone when two of eight experts share the load', () => {
    // [500, 480, 5, 5, 5, 5, 0, 0], top-1, T = 1000; top share = 0.5 < 0.9
    // H = .5 ln2 + .48 ln(1/.48) + 4 * .005 ln(200)
    //   = 0.3465736 + .48*0.7339692 + .02*5.2983174 = 0.3465736 + 0.3523052 + 0.1059663 = 0.8048451
    // H/ln8 = 0.8048451/2.0794415 = 0.3870487 < 0.5
    const v = routerCollapse([500, 480, 5, 5, 5, 5, 0, 0]);
    expect(v.collapsed).toBe(true);
    expect(v.reason).toBe('entropy');
    expect(v.normalizedEntropy).toBeCloseTo(0.3870487, 6);
    expect(v.topShare).toBeCloseTo(0.5, 12);
  });

  it('fires on top-k share alone under top-2 routing', () => {
    // [1000, 900, 60, 40], top-2: 2000 assignments = 1000 tokens.
    // top-2 share = (1000+900)/2000 = 0.95 >= 0.9
    // p = .5, .45, .03, .02: H = .5*0.6931472 + .45*0.7985077 + .03*3.5065579 + .02*3.9120230
    //   = 0.3465736 + 0.3593285 + 0.1051967 + 0.0782405 = 0.8893393; /ln4 = 0.6415227 >= 0.5
    const v = routerCollapse([1000, 900, 60, 40], { topK: 2 });
    expect(v.collapsed).toBe(true);
    expect(v.reason).toBe('top_share');
    expect(v.topShare).toBeCloseTo(0.95, 12);
    expect(v.normalizedEntropy).toBeCloseTo(0.6415227, 6);
    expect(v.experts).toEqual([0, 1]);
    // Judged as top-1 the same counts are 2000 tokens and the top-1 share is only 0.5: no collapse.
    expect(routerCollapse([1000, 900, 60, 40]).collapsed).toBe(false);
  });

  it('a top share exactly at the threshold counts (>=)', () => {
    // [1000, 800, 100, 100], top-2: 2000 assignments = 1000 tokens; top-2 share = 1800/2000 = 0.9
    // p = .5, .4, .05, .05: H = .5*0.6931472 + .4*0.9162907 + .1*2.9957323 = 0.3465736 + 0.3665163 + 0.2995732
    //   = 1.0126631; /ln4 = 1.0126631/1.3862944 = 0.7304820 >= .5, so only the share test can fire
    const v = routerCollapse([1000, 800, 100, 100], { topK: 2 });
    expect(v.normalizedEntropy).toBeCloseTo(0.730482, 6);
    expect(v.collapsed).toBe(true);
    expect(v.reason).toBe('top_share');
    expect(routerCollapse([1000, 800, 100, 100], { topK: 2, collapseTopShare: 0.91 }).collapsed).toBe(false);
  });

  it('thresholds are configurable', () => {
    // 0.95 share, entropy 0.181: with collapseTopShare 0.96 and collapseEntropy 0.1 neither test fires
    const v = routerCollapse([950, 20, 20, 10], { collapseTopShare: 0.96, collapseEntropy: 0.1 });
    expect(v.judged).toBe(true);
    expect(v.collapsed).toBe(false);
    expect(v.reason).toBeNull();
  });

  it('one expert in the top-k of nearly every token is collapse, even while the other slot varies', () => {
    // E = 8, k = 2, 1000 tokens: expert 2 in all of them; the second slot spread over the other
    // seven: 143 x 6 + 142 = 1000. Total 2000 assignments.
    // Top-2 share (1000 + 143) / 2000 = 0.5715 < 0.9; H = 0.5 ln 2 + 7 x (1/14) ln 14 = 1.666 nats,
    // / ln 8 (2.079) = 0.80 > 0.5: neither older test fires. Expert token share 1000 / 1000 = 1.0 >= 0.9.
    const counts = [143, 143, 1000, 143, 143, 143, 143, 142];
    const v = routerCollapse(counts, { topK: 2 });
    expect(v.collapsed).toBe(true);
    expect(v.reason).toBe('one_expert');
    expect(v.experts).toEqual([2]);
    expect(v.expertTokenShare).toBe(1);
    // Even top-2 routing of 8 experts puts each expert in 2/8 = 25% of tokens: no collapse.
    expect(routerCollapse([250, 250, 250, 250, 250, 250, 250, 250], { topK: 2 }).collapsed).toBe(false);
    // k / E = 3 / 6 = 0.5 > 0.45: even routing already puts each expert in half the tokens; not judged this way.
    expect(routerCollapse([1000, 400, 400, 400, 400, 400], { topK: 3 }).reason).toBeNull();
  });

  it('even routing is not collapse', () => {
    const v = routerCollapse([250, 250, 250, 250]);
    expect(v.judged).toBe(true);
    expect(v.collapsed).toBe(false);
  });

  it('not judged below minTokens, with no tokens, or when k >= E', () => {
    expect(routerCollapse([999, 0, 0, 0]).judged).toBe(false); // 999 < 1000
    expect(routerCollapse([999, 0, 0, 0]).collapsed).toBe(false);
    expect(routerCollapse([0, 0, 0, 0]).judged).toBe(false);
    expect(routerCollapse([2000, 2000], { topK: 2 }).judged).toBe(false);
  });
});

describe('router logits', () => {
  // Two tokens, two experts: row 0 = [0, 0], row 1 = [ln3, 0].
  // row 0: p = (1/2, 1/2), argmax 0 (tie -> lower index), H = ln2 = 0.6931472, lse = ln2
  // row 1: p = (3/4, 1/4), argmax 0, H = .75 ln(4/3) + .25 ln4 = .75*0.2876821 + .25*1.3862944
  //        = 0.2157616 + 0.3465736 = 0.5623351, lse = ln(3 + 1) = ln4
  const logits = new Float32Array([0, 0, LN3, 0]);

  it('mean per-token entropy, raw and normalized by ln E', () => {
    // mean = (0.6931472 + 0.5623351)/2 = 0.6277412; / ln2 = 0.9056391
    // (the entropy of the MEAN probabilities (.625, .375) would be 0.6615632: a different quantity)
    const h = routerEntropy(logits, 2, 2);
    expect(h.mean).toBeCloseTo(0.6277412, 5);
    expect(h.normalized).toBeCloseTo(0.9056391, 5);
  });

  it('z-loss is the mean squared logsumexp', () => {
    // (ln2^2 + ln4^2)/2 = (0.4804530 + 1.9218121)/2 = 1.2011325
    expect(routerZLoss(logits, 2, 2)).toBeCloseTo(1.2011325, 5);
  });

  it('Switch loss E * sum f_i P_i', () => {
    // f = (2/2, 0/2) = (1, 0); P = ((.5+.75)/2, (.5+.25)/2) = (.625, .375)
    // L = 2 * (1*.625 + 0*.375) = 1.25
    expect(switchLoadBalancingLoss(logits, 2, 2)).toBeCloseTo(1.25, 6);
  });

  it('Switch loss is 1 for balanced routing and E for total collapse', () => {
    // rows [ln3, 0], [0, ln3]: f = (.5, .5), P = ((.75+.25)/2, (.25+.75)/2) = (.5, .5); 2*(.25+.25) = 1
    expect(switchLoadBalancingLoss(new Float32Array([LN3, 0, 0, LN3]), 2, 2)).toBeCloseTo(1, 6);
    // rows [100, 0] twice: f = (1, 0), P = (1 - e^-100, e^-100) ~ (1, 0); 2*1*1 = 2
    expect(switchLoadBalancingLoss([100, 0, 100, 0], 2, 2)).toBeCloseTo(2, 12);
  });

  it('uniform logits over four experts', () => {
    // p = 1/4 each: H = ln4, normalized 1; lse = ln4, z = ln4^2 = 1.9218121
    // argmax always 0: f = (1,0,0,0), P = (1/4,...): L = 4 * 1 * 1/4 = 1
    const s = routerLogitStats(new Float32Array(12), 3, 4);
    expect(s.tokens).toBe(3);
    expect(s.meanEntropy).toBeCloseTo(LN4, 6);
    expect(s.normalizedEntropy).toBeCloseTo(1, 6);
    expect(s.zLoss).toBeCloseTo(LN4 * LN4, 6);
    expect(s.switchLoss).toBeCloseTo(1, 6);
  });

  it('entropy is shift-invariant but z-loss is not', () => {
    // [10, 10]: H = ln2 still; lse = 10 + ln2 = 10.6931472; z = 114.3433966
    const s = routerLogitStats([10, 10], 1, 2);
    expect(s.meanEntropy).toBeCloseTo(LN2, 10);
    expect(s.zLoss).toBeCloseTo(114.3433966, 6);
  });

  it('large logits do not overflow', () => {
    // [1000, 0]: lse = 1000 + ln(1 + e^-1000) = 1000; z = 1e6; H ~ 0
    const s = routerLogitStats([1000, 0], 1, 2);
    expect(s.zLoss).toBeCloseTo(1e6, 6);
    expect(s.meanEntropy).toBeCloseTo(0, 10);
  });

  it('rows with NaN or Inf are counted and left out', () => {
    // rows: [NaN, 0] (1 NaN), [0, 0] (kept: H = ln2), [Inf, -Inf] (2 Inf)
    const s = routerLogitStats(new Float32Array([NaN, 0, 0, 0, Infinity, -Infinity]), 3, 2);
    expect(s.tokens).toBe(1);
    expect(s.nonFiniteTokens).toBe(2);
    expect(s.nanCount).toBe(1);
    expect(s.infCount).toBe(2);
    expect(s.meanEntropy).toBeCloseTo(LN2, 6);
    expect(s.zLoss).toBeCloseTo(LN2 * LN2, 6);
  });

  it('no tokens: NaN statistics; bad shapes throw', () => {
    const s = routerLogitStats(new Float32Array(0), 0, 8);
    expect(s.tokens).toBe(0);
    expect(s.meanEntropy).toBeNaN();
    expect(s.zLoss).toBeNaN();
    expect(s.switchLoss).toBeNaN();
    expect(() => routerLogitStats(new Float32Array(5), 3, 2)).toThrow(RangeError);
    expect(() => routerLogitStats(new Float32Array(4), 2, 0)).toThrow(RangeError);
  });
});

describe('co-activation', () => {
  // E = 5, k = 2; tokens {0,1}, {0,2}, {0,1}, {3,1}; expert 4 never used.
  // n0 = 3, n1 = 3, n2 = 1, n3 = 1, n4 = 0
  // both(0,1) = 2, both(0,2) = 1, both(1,3) = 1, all other pairs 0
  const ids = new Int32Array([0, 1, 0, 2, 0, 1, 3, 1]);
  const m = coactivation(ids, 4, 2, 5);
  const at = (i: number, j: number) => m[i * 5 + j];

  it('P(j | i) = both / n_i, not symmetric', () => {
    expect(at(0, 1)).toBeCloseTo(2 / 3, 12); // 2/3
    expect(at(0, 2)).toBeCloseTo(1 / 3, 12); // 1/3
    expect(at(0, 3)).toBe(0);
    expect(at(1, 0)).toBeCloseTo(2 / 3, 12); // 2/3
    expect(at(1, 3)).toBeCloseTo(1 / 3, 12); // 1/3
    expect(at(1, 2)).toBe(0);
    expect(at(2, 0)).toBe(1); // 1/1, while P(2|0) = 1/3
    expect(at(3, 1)).toBe(1); // 1/1
  });

  it('diagonal is 1 for used experts; an unused expert\'s row is all 0', () => {
    for (let i = 0; i < 4; i++) expect(at(i, i)).toBe(1);
    for (let j = 0; j < 5; j++) expect(at(4, j)).toBe(0);
    // nobody co-occurs with 4
    for (let i = 0; i < 4; i++) expect(at(i, 4)).toBe(0);
  });

  it('ignores padding ids and repeats within a row, and reuses `out`', () => {
    // E = 3, k = 3; token 0 = {2, 2, -1} -> just {2}; token 1 = {0, 2, 7(out of range)} -> {0, 2}
    // n2 = 2, n0 = 1; both(0,2) = 1 -> P(2|0) = 1, P(0|2) = 1/2
    const out = new Float64Array(9).fill(99);
    const r = coactivation([2, 2, -1, 0, 2, 7], 2, 3, 3, out);
    expect(r).toBe(out);
    expect(Array.from(r)).toEqual([1, 0, 1, 0, 0, 0, 0.5, 0, 1]);
  });

  it('no tokens: all-zero matrix; bad shapes throw', () => {
    expect(Array.from(coactivation([], 0, 2, 2))).toEqual([0, 0, 0, 0]);
    expect(() => coactivation([0, 1, 2], 2, 2, 4)).toThrow(RangeError);
    expect(() => coactivation([0, 1], 1, 2, 2, new Float64Array(3))).toThrow(RangeError);
  });
});

describe('temporal locality', () => {
  it('first-expert repeat rate over consecutive pairs', () => {
    // [0,0,1,1,1,2]: pairs (0,0)y (0,1)n (1,1)y (1,1)y (1,2)n -> 3/5
    expect(firstExpertRepeatRate([0, 0, 1, 1, 1, 2])).toBeCloseTo(0.6, 12);
  });

  it('does not count pairs across sequence boundaries', () => {
    // sequences [0,0,1] [1,1,2]: pairs (0,0)y (0,1)n | (1,1)y (1,2)n -> 2/4; the straddling (1,1) is left out
    expect(firstExpertRepeatRate(new Int32Array([0, 0, 1, 1, 1, 2]), 3)).toBeCloseTo(0.5, 12);
  });

  it('skips pairs with padding, NaN with fewer than two tokens', () => {
    // [3, -1, 3, 3]: pairs (3,-1) skip, (-1,3) skip, (3,3) y -> 1/1
    expect(firstExpertRepeatRate([3, -1, 3, 3])).toBe(1);
    expect(firstExpertRepeatRate([3])).toBeNaN();
    expect(firstExpertRepeatRate([1, 2], 1)).toBeNaN(); // every token its own sequence: no pairs
  });

  it('baselines: 1/E for first choice, 1 - C(E-k,k)/C(E,k) for top-k overlap', () => {
    expect(firstExpertRepeatBaseline(8)).toBe(0.125);
    // E=8, k=2: C(6,2)/C(8,2) = 15/28 -> 1 - 15/28 = 13/28 = 0.4642857
    expect(topKOverlapBaseline(8, 2)).toBeCloseTo(13 / 28, 12);
    expect(topKOverlapBaseline(8, 1)).toBeCloseTo(1 / 8, 12);
    expect(topKOverlapBaseline(8, 5)).toBe(1); // 2k > E: must overlap
  });

  it('top-k overlap rate', () => {
    // k=2: {0,1} {1,2} {3,4} {4,3}: pairs share 1 (y), nothing (n), {3,4} (y) -> 2/3
    expect(topKOverlapRate([0, 1, 1, 2, 3, 4, 4, 3], 4, 2)).toBeCloseTo(2 / 3, 12);
    // as two sequences of 2: pairs {0,1}-{1,2} y and {3,4}-{4,3} y -> 2/2
    expect(topKOverlapRate([0, 1, 1, 2, 3, 4, 4, 3], 4, 2, 2)).toBe(1);
  });
});

describe('vocabulary specialization', () => {
  it('per-token top share and the occurrence-weighted mean over ids seen at least M times', () => {
    // token 5: experts 1,1,2 -> n=3, top 1 (2 times), share 2/3
    // token 7: experts 3,3   -> n=2, top 3, share 1
    // token 9: expert 0      -> n=1, below M=2, left out of the mean
    // weighted = (2 + 2) / (3 + 2) = 0.8   (the unweighted mean (2/3 + 1)/2 = 0.8333 would be wrong)
    const r = vocabularySpecialization([5, 5, 5, 7, 7, 9], [1, 1, 2, 3, 3, 0], 2);
    expect(r.weightedShare).toBeCloseTo(0.8, 12);
    expect(r.idsConsidered).toBe(2);
    expect(r.tokensConsidered).toBe(5);
    expect(r.perToken.get(5)).toEqual({ tokenId: 5, count: 3, topExpert: 1, share: 2 / 3 });
    expect(r.perToken.get(7)?.share).toBe(1);
    expect(r.perToken.get(9)).toEqual({ tokenId: 9, count: 1, topExpert: 0, share: 1 });
  });

  it('ties go to the lower expert; default M = 10', () => {
    // token 4 goes to experts 6,2,6,2: tie 2-2 -> expert 2, share 1/2
    const r = vocabularySpecialization([4, 4, 4, 4], [6, 2, 6, 2]);
    expect(r.perToken.get(4)?.topExpert).toBe(2);
    expect(r.perToken.get(4)?.share).toBe(0.5);
    expect(r.weightedShare).toBeNaN(); // 4 occurrences < 10
    expect(vocabularySpecialization([4, 4, 4, 4], [6, 2, 6, 2], 4).weightedShare).toBe(0.5);
  });

  it('length mismatch throws', () => {
    expect(() => vocabularySpecialization([1, 2], [0])).toThrow(RangeError);
  });
});


/** Counts from `tokens` tokens each routed to k distinct experts chosen uniformly at random. */
function uniformCounts(experts: number, k: number, tokens: number, seed: number): Float64Array {
  const next = rng(seed);
  const counts = new Float64Array(experts);
  const picked: number[] = [];
  for (let t = 0; t < tokens; t++) {
    picked.length = 0;
    while (picked.length < k) {
      const e = Math.floor(next() * experts);
      if (!picked.includes(e)) picked.push(e);
    }
    for (const e of picked) counts[e]!++;
  }
  return counts;
}

describe('findings', () => {
  it('healthy near-uniform layers produce no findings', () => {
    const layers: LayerWindow[] = [];
    // Mixtral-like: 8 experts, top-2, 1000 tokens (sampling noise included)
    layers.push({ counts: uniformCounts(8, 2, 1000, 1), topK: 2, routerEntropy: 0.6, nanLogits: 0, infLogits: 0, droppedTokens: 5 });
    // 64 experts, top-2, 12,800 tokens
    layers.push({ counts: uniformCounts(64, 2, 12800, 2), topK: 2, routerEntropy: 0.8 });
    // 512 experts, top-8, at exactly the smallest judgeable window (3,200 tokens, 50 expected per expert)
    layers.push({ counts: uniformCounts(512, 8, 3200, 3), topK: 8, routerEntropy: 0.9 });
    // 512 experts, top-1, only 2,000 tokens: ~4 per expert, some at 0 by chance, not judged dead
    const sparse = uniformCounts(512, 1, 2000, 4);
    expect(sparse.some((c) => c === 0)).toBe(true);
    layers.push({ counts: sparse });
    // perfectly even
    for (let i = 0; i < 60; i++) layers.push({ counts: new Float64Array(512).fill(100), topK: 8 });
    expect(findings(layers)).toEqual([]);
  });

  it('dead expert, in words', () => {
    // 9 experts, top-1, expert 5 at 0, the other 8 at 1,600: 12,800 tokens >= 1,000
    // mean 12800/9 = 1422.2, MaxVio = (1600 - 1422.2)/1422.2 = 0.125: no imbalance
    // H/ln9 = ln8/ln9 = 0.946: no collapse
    const counts = [1600, 1600, 1600, 1600, 1600, 0, 1600, 1600, 1600];
    const f = findings([{ layer: 3, counts }]);
    expect(f).toEqual([
      {
        kind: 'dead_expert',
        layer: 3,
        experts: [5],
        value: 12800,
        threshold: 1000,
        message: 'Layer 3: expert 5 received no tokens in the last 12,800 tokens',
      },
    ]);
  });

  it('several and many dead experts', () => {
    // layer position 1 (no `layer` given): experts 1, 4, 6 of 8 dead; 5 x 400 = 2000 tokens
    const few = findings([{ counts: [1, 1, 1, 1, 1, 1, 1, 1] }, { counts: [400, 0, 400, 400, 0, 400, 0, 400] }]);
    expect(few).toHaveLength(1);
    expect(few[0]!.layer).toBe(1);
    expect(few[0]!.experts).toEqual([1, 4, 6]);
    expect(few[0]!.message).toBe('Layer 1: experts 1, 4 and 6 received no tokens in the last 2,000 tokens');

    // 64 experts, top-1, experts 0..39 dead, 24 x 500 = 12,000 tokens (need max(1000, 50*64) = 3,200)
    // mean 12000/64 = 187.5, MaxVio = (500-187.5)/187.5 = 1.667 > 1 -> also imbalance
    // H = ln24, H/ln64 = 3.1781/4.1589 = 0.764: no collapse; top share 500/12000 = 0.042
    const counts = new Float64Array(64);
    for (let i = 40; i < 64; i++) counts[i] = 500;
    const many = findings([{ layer: 0, counts }]);
    expect(many.map((x) => x.kind)).toEqual(['dead_expert', 'imbalance']);
    expect(many[0]!.experts).toHaveLength(40);
    expect(many[0]!.threshold).toBe(3200);
    expect(many[0]!.message).toBe('Layer 0: 40 of 64 experts (0, 1, 2, 3, 4 and 35 more) received no tokens in the last 12,000 tokens');
  });

  it('no dead-expert verdict on too small a window', () => {
    // 999 tokens
    expect(findings([{ counts: [333, 333, 333, 0] }])).toEqual([]);
    // with minTokens lowered to 999 (and 50*4 = 200 expected per-expert window), it is judged
    expect(findings([{ counts: [333, 333, 333, 0] }], { minTokens: 999 }).map((x) => x.kind)).toEqual(['dead_expert']);
  });

  it('imbalance: the busiest expert has over twice its share', () => {
    // [2500, 500, 500, 500], top-1, 4000 tokens; mean 1000; MaxVio = (2500-1000)/1000 = 1.5 > 1
    // not collapse: top share .625 < .9; H = .625 ln1.6 + 3*.125 ln8 = 0.2937515 + 0.7797906 = 1.0735421,
    // /ln4 = 0.774 >= .5
    const f = findings([{ layer: 2, counts: [2500, 500, 500, 500] }]);
    expect(f).toHaveLength(1);
    expect(f[0]!.kind).toBe('imbalance');
    expect(f[0]!.experts).toEqual([0]);
    expect(f[0]!.value).toBeCloseTo(1.5, 12);
    expect(f[0]!.threshold).toBe(1);
    expect(f[0]!.message).toBe('Layer 2: expert 0 received up to 2.5x the mean load (MaxVio 1.50 > 1.00)');
    // MaxVio 1.5 is under an overridden threshold of 2
    expect(findings([{ layer: 2, counts: [2500, 500, 500, 500] }], { imbalanceMaxVio: 2 })).toEqual([]);
  });

  it('imbalance lists every overloaded expert, busiest first', () => {
    // E = 12, top-1: ten experts at 130, expert 1 at 2200, expert 4 at 2500; T = 1300 + 2200 + 2500 = 6000 tokens
    // mean 500; limit (1+1)*500 = 1000: experts 4 (2500) and 1 (2200); MaxVio = (2500-500)/500 = 4; max/mean = 5.0
    // not collapse: top share 2500/6000 = .417; p = .416667, .366667, ten of .021667:
    // H = .416667 ln2.4 + .366667 ln2.727273 + .216667 ln46.153846 = 0.364779 + 0.367877 + 0.830281 = 1.562937,
    // /ln12 = 1.562937/2.484907 = 0.629 >= .5
    const counts = [130, 2200, 130, 130, 2500, 130, 130, 130, 130, 130, 130, 130];
    const f = findings([{ counts }]);
    expect(f.map((x) => x.kind)).toEqual(['imbalance']);
    expect(f[0]!.experts).toEqual([4, 1]);
    expect(f[0]!.value).toBeCloseTo(4, 12);
    expect(f[0]!.message).toBe('Layer 0: experts 4 and 1 received up to 5.0x the mean load (MaxVio 4.00 > 1.00)');
  });

  it('collapse, reported instead of imbalance', () => {
    // [3800, 100, 50, 50], 4000 tokens: top share .95; MaxVio = (3800-1000)/1000 = 2.8 (not reported separately)
    // H = .95 ln(1/.95) + .025 ln40 + 2*.0125 ln80 = 0.0487286 + 0.0922219 + 0.1095507 = 0.2505013
    // H/ln4 = 0.1806985 < 0.5 -> value is the entropy; exp(H) = 1.285
    const f = findings([{ layer: 7, counts: [3800, 100, 50, 50] }]);
    expect(f).toHaveLength(1);
    expect(f[0]!.kind).toBe('collapse');
    expect(f[0]!.experts).toEqual([0]);
    expect(f[0]!.value).toBeCloseTo(0.1806985, 6);
    expect(f[0]!.threshold).toBe(0.5);
    expect(f[0]!.message).toBe(
      'Layer 7: routing has collapsed onto expert 0 (95.0% of tokens; normalized load entropy 0.18, effective experts 1.3 of 4)',
    );
  });

  it('collapse onto the top-k under top-2, with the dead experts it leaves', () => {
    // 8 experts, top-2, 2000 tokens always to experts 2 and 6: top-2 share 1 >= .9; H = ln2, H/ln8 = 1/3 < .5
    // window 2000 >= max(1000, 50*8/2 = 200): the other six are dead
    const f = findings([{ layer: 1, counts: [0, 0, 2000, 0, 0, 0, 2000, 0], topK: 2 }]);
    expect(f.map((x) => x.kind)).toEqual(['collapse', 'dead_expert']);
    expect(f[0]!.experts).toEqual([2, 6]);
    expect(f[0]!.value).toBeCloseTo(1 / 3, 12);
    expect(f[0]!.message).toBe(
      'Layer 1: routing has collapsed onto experts 2 and 6 (100.0% of assignments; normalized load entropy 0.33, effective experts 2.0 of 8)',
    );
    expect(f[1]!.experts).toEqual([0, 1, 3, 4, 5, 7]);
    expect(f[1]!.message).toBe('Layer 1: experts 0, 1, 3, 4, 5 and 7 received no tokens in the last 2,000 tokens');
  });

  it('NaN and Inf logits', () => {
    const even = [300, 300, 300, 300];
    const f = findings([{ layer: 4, counts: even, nanLogits: 3, infLogits: 1 }]);
    expect(f).toEqual([
      {
        kind: 'nan_logits', layer: 4, value: 4, threshold: 0,
        message: 'Layer 4: router logits contained 3 NaN and 1 infinite values (no collapse, dead-expert or imbalance verdict on this layer in this window)',
      },
    ]);
    // tolerated up to an overridden count of 4
    expect(findings([{ counts: even, nanLogits: 3, infLogits: 1 }], { nonFiniteLogits: 4 })).toEqual([]);
    // reported even when nothing was counted
    expect(findings([{ counts: [0, 0], nanLogits: 1 }]).map((x) => x.kind)).toEqual(['nan_logits']);
  });

  it('draws no collapse, dead-expert or imbalance finding from a layer whose routing was not finite', () => {
    // All tokens on expert 3: a collapse with three dead experts, were the logits finite.
    const collapsed = [0, 0, 0, 4000];
    expect(findings([{ counts: collapsed }]).map((x) => x.kind)).toEqual(['collapse', 'dead_expert']);
    expect(findings([{ counts: collapsed, nanLogits: 4000 }]).map((x) => x.kind)).toEqual(['nan_logits']);
    expect(findings([{ counts: collapsed, infLogits: 1 }]).map((x) => x.kind)).toEqual(['nan_logits']);
    // even when the NaN count is tolerated as a finding, its layer's load is not judged
    expect(findings([{ counts: collapsed, nanLogits: 2 }], { nonFiniteLogits: 5 })).toEqual([]);
  });

  it('names layers as the model does, and judges each design by what its counts mean', () => {
    const collapsed = [0, 0, 0, 4000];
    const named = findings([{ layer: 1, label: 'model.layers.2.mlp (layer 2)', counts: collapsed }]);
    expect(named.map((x) => [x.layer, x.message.split(':')[0]])).toEqual([[1, 'model.layers.2.mlp (layer 2)'], [1, 'model.layers.2.mlp (layer 2)']]);
    // expert choice: every expert takes the same number by design, so loads are not judged
    expect(findings([{ counts: collapsed, design: 'expert-choice' }])).toEqual([]);
    // hash tables, fixed routing and sigmoid gates: the softmax of the logits is not what chooses
    const saturated = { counts: [1000, 1000, 1000, 1000], routerEntropy: 0.001 };
    expect(findings([saturated]).map((x) => x.kind)).toEqual(['abnormal_entropy']);
    expect(findings([{ ...saturated, design: 'hash' }])).toEqual([]);
    expect(findings([{ ...saturated, design: 'fixed' }])).toEqual([]);
    expect(findings([{ ...saturated, gating: 'sigmoid' }])).toEqual([]);
    // a hash layer's load is still judged: an expert its table never names is dead
    expect(findings([{ counts: [0, 1400, 1300, 1300], design: 'hash' }]).map((x) => x.kind)).toEqual(['dead_expert']);
  });

  it('abnormal router entropy, low and high', () => {
    const even = [300, 300, 300, 300];
    const low = findings([{ counts: even, routerEntropy: 0.01 }]);
    expect(low).toHaveLength(1);
    expect(low[0]!.kind).toBe('abnormal_entropy');
    expect(low[0]!.value).toBe(0.01);
    expect(low[0]!.threshold).toBe(0.05);
    expect(low[0]!.message).toBe(
      'Layer 0: router is saturated: mean normalized per-token entropy 0.010 < 0.050 (near one-hot probabilities)',
    );
    const high = findings([{ counts: even, routerEntropy: 0.995 }]);
    expect(high[0]!.threshold).toBe(0.99);
    expect(high[0]!.message).toBe(
      'Layer 0: router barely distinguishes experts: mean normalized per-token entropy 0.995 > 0.990 (near-uniform probabilities)',
    );
    // in range, at the bounds, or unknown: nothing
    expect(findings([{ counts: even, routerEntropy: 0.05 }, { counts: even, routerEntropy: 0.99 }, { counts: even, routerEntropy: NaN }])).toEqual([]);
  });

  it('dropped tokens', () => {
    // 320 dropped of 12,800 = 2.5% > 1%
    const counts = [3200, 3200, 3200, 3200];
    const f = findings([{ layer: 5, counts, droppedTokens: 320 }]);
    expect(f).toEqual([
      {
        kind: 'dropped_tokens',
        layer: 5,
        value: 0.025,
        threshold: 0.01,
        message: 'Layer 5: 2.5% of tokens (320 of 12,800) were dropped over expert capacity (> 1.0%)',
      },
    ]);
    // 128 of 12,800 = exactly 1%: not over
    expect(findings([{ counts, droppedTokens: 128 }])).toEqual([]);
    expect(findings([{ counts, droppedTokens: 128 }], { droppedFraction: 0.005 })).toHaveLength(1);
  });

  it('a layer with no tokens gets no load findings', () => {
    expect(findings([{ counts: new Float64Array(64) }, { counts: [] }])).toEqual([]);
  });

  it('orders findings by layer, then nan, collapse, dead, imbalance, entropy, dropped', () => {
    const f = findings([
      { layer: 0, counts: [300, 300, 300, 300], droppedTokens: 100, routerEntropy: 0.001 },
      { layer: 1, counts: [0, 0, 2000, 0, 0, 0, 2000, 0], topK: 2, routerEntropy: 0.001 },
      { layer: 2, counts: [0, 0, 2000, 0, 0, 0, 2000, 0], topK: 2, nanLogits: 1, droppedTokens: 100 },
    ]);
    expect(f.map((x) => `${x.layer}:${x.kind}`)).toEqual([
      '0:abnormal_entropy',
      '0:dropped_tokens',
      '1:collapse',
      '1:dead_expert',
      '1:abnormal_entropy',
      '2:nan_logits',
      '2:dropped_tokens',
    ]);
  });

  it('DEFAULT_THRESHOLDS is frozen and overrides do not leak', () => {
    expect(Object.isFrozen(DEFAULT_THRESHOLDS)).toBe(true);
    findings([{ counts: [1, 2] }], { minTokens: 1, imbalanceMaxVio: 0 });
    expect(DEFAULT_THRESHOLDS.minTokens).toBe(1000);
    expect(DEFAULT_THRESHOLDS.imbalanceMaxVio).toBe(1);
    // an explicit undefined keeps the default
    expect(findings([{ counts: [333, 333, 333, 0] }], { minTokens: undefined })).toEqual([]);
  });
});
