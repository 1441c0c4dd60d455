/**
 * Expert placement, against cases worked out by hand (the arithmetic is beside each expected
 * value), and against the reference EPLB greedy on random skewed loads: ours is never worse.
 */
import { describe, expect, it } from 'vitest';
import { contiguousPlacement, eplbPlacement, evaluatePlacement, greedyReplicas, planPlacement, PlacementError } from '../../src/analysis/placement';
import { prng } from './prng';

describe('placement', () => {
  it('contiguous: expert e on device e / (E / G), no replicas', () => {
    // loads 5 3 | 2 2: devices 8 and 4, mean 6, balancedness 6 / 8
    const p = contiguousPlacement([5, 3, 2, 2], 2);
    expect(p.slots).toEqual([0, 1, 2, 3]);
    expect(p.deviceLoad).toEqual([8, 4]);
    expect(p.balancedness).toBeCloseTo(0.75, 12);
  });

  it('greedy replication gives each redundant slot to the largest load per replica', () => {
    // 9/1 > 1/1 -> expert 0 (2 replicas, 4.5 each); 4.5 > 1 -> expert 0 again (3 replicas, 3 each)
    expect(greedyReplicas([9, 1], 2)).toEqual([3, 1]);
    // 8 6 1: 8 -> [2,1,1] (4, 6, 1); 6 -> [2,2,1] (4, 3, 1); 4 -> [3,2,1]
    expect(greedyReplicas([8, 6, 1], 3)).toEqual([3, 2, 1]);
  });

  it('EPLB packing: heaviest first onto the lightest device with room', () => {
    // no redundancy, 2 devices x 2 slots, loads 5 3 2 2:
    // 5 -> d0 (0, 0: lowest index), 3 -> d1 (5 > 0), 2 -> d1 (3 < 5), 2 -> d0 (d1 full): d0 = 7, d1 = 5
    const p = eplbPlacement([5, 3, 2, 2], 2, 0);
    expect(p.slots).toEqual([0, 3, 1, 2]);
    expect(p.deviceLoad).toEqual([7, 5]);
    expect(p.balancedness).toBeCloseTo(6 / 7, 12);
  });

  it('EPLB on loads 9 and 1, 2 devices x 2 slots: three replicas of expert 0, 6 and 4', () => {
    // replicas [3, 1]: items 3 3 3 1; 3 -> d0, 3 -> d1, 3 -> d0 (tie, lowest), 1 -> d1: 6 and 4, balancedness 5 / 6
    const p = eplbPlacement([9, 1], 2, 2);
    expect(p.replicas).toEqual([3, 1]);
    expect(p.deviceLoad).toEqual([6, 4]);
    expect(p.balancedness).toBeCloseTo(5 / 6, 12);
  });

  it('ours on loads 9 and 1 moves a redundant slot and reaches 4.5 + 0.5 on each device', () => {
    const p = planPlacement([9, 1], 2, 2);
    expect(p.replicas).toEqual([2, 2]);
    expect(p.deviceLoad).toEqual([5, 5]);
    expect(p.balancedness).toBe(1);
    // each device holds one replica of each expert
    expect([p.slots.slice(0, 2).sort(), p.slots.slice(2).sort()]).toEqual([[0, 1], [0, 1]]);
  });

  it('ours swaps out of a greedy dead end', () => {
    // 3 devices x 2 slots, loads 8 7 6 5 4 0 (sum 30, ideal 10 each).
    // Greedy: 8 d0, 7 d1, 6 d2, 5 d2 (11), 4 d1 (11), 0 d0 (8): max 11.
    // A swap of 5 (d2) with 4 (d1) changes nothing; 8+0 | 7+4 | 6+5 -> swap 0 (d0) and 4 (d1):
    // d0 12 -- worse. The optimum is 8+... no pair sums to 10 with 0 in the set (8+0, 7+4, 6+5 = 8, 11, 11
    // or 8+4, 7+5, 6+0 = 12, 12, 6 ...): the best max is 11. Both find it.
    const loads = [8, 7, 6, 5, 4, 0];
    const ours = planPlacement(loads, 3, 0);
    const eplb = eplbPlacement(loads, 3, 0);
    expect(Math.max(...ours.deviceLoad)).toBe(11);
    expect(Math.max(...eplb.deviceLoad)).toBe(11);
    // 4 devices x 2 slots, loads 10 9 8 7 3 2 1 0 (sum 40, ideal 10):
    // EPLB: 10 d0, 9 d1, 8 d2, 7 d3, 3 d3 (10), 2 d2 (10), 1 d1 (10), 0 d0 (10): already 10 everywhere.
    expect(eplbPlacement([10, 9, 8, 7, 3, 2, 1, 0], 4, 0).balancedness).toBe(1);
    // 2 devices x 3 slots, loads 5 5 4 3 3 2 (sum 22, ideal 11):
    // EPLB: 5 d0, 5 d1, 4 d0 (9), 3 d1 (8), 3 d1 (11, d0 has 2 items -> d1 is lighter), 2 d0 (11). Already 11.
    // loads 6 5 5 4 4 0: EPLB 6 d0, 5 d1, 5 d1 (10? no: d1 5 < d0 6) -> d1 10, 4 d0 (10), 4 d0 (14)? d0 has 2, d1 has 2:
    // d0 10 = d1 10, lowest index d0 -> 14; 0 -> d1 (10): 14 and 10. The best is 6+4+0 = 10... 6+5+0 = 11 | 5+4+4 = 13?
    // 6 4 0 | 5 5 4 = 10 | 14; 6 5 0 | 5 4 4 = 11 | 13; 6 4 4 | 5 5 0 = 14 | 10; 6 5 4 | 5 4 0 = 15 | 9; 6 5 5 | 4 4 0 = 16 | 8:
    // best max 12? 6 5 ... sums to 12 need {6,5,?=1} no; {6,4,?=2} no: best is 13 (6 4 ... no, 5 4 4 = 13, 6 5 0 = 11).
    const eplb2 = eplbPlacement([6, 5, 5, 4, 4, 0], 2, 0);
    expect(eplb2.deviceLoad).toEqual([14, 10]);
    const ours2 = planPlacement([6, 5, 5, 4, 4, 0], 2, 0);
    expect(Math.max(...ours2.deviceLoad)).toBe(13); // a swap of 4 (d0) with 0 (d1) gives 10 | 14, of 6 with 5: 13 | 11
    expect(ours2.balancedness).toBeCloseTo(12 / 13, 12);
  });

  it('predicted device loads split each expert evenly over its replicas', () => {
    // slots [0 1 | 0 2], replicas [2 1 1], loads 8 3 1: d0 = 4 + 3, d1 = 4 + 1
    expect(evaluatePlacement([8, 3, 1], [0, 1, 0, 2], [2, 1, 1], 2).deviceLoad).toEqual([7, 5]);
  });

  it('says why a placement cannot be made', () => {
    expect(() => planPlacement([1, 2, 3], 2, 0)).toThrow(PlacementError);
    expect(() => planPlacement([1, 2, 3], 2, 0)).toThrow(/3 slots, which 2 devices cannot share equally/);
    expect(() => planPlacement([1, -2], 2, 0)).toThrow(/finite number/);
    expect(() => planPlacement([], 1, 0)).toThrow(/no experts/);
    expect(() => planPlacement([1, 2], 0, 0)).toThrow(/devices/);
  });

  it('is never worse than EPLB, and keeps the slot counts and every expert, on random skewed loads', () => {
    const rand = prng(7);
    let better = 0;
    for (let trial = 0; trial < 60; trial++) {
      const e = [8, 16, 64, 256][trial % 4]!;
      const g = [2, 4, 8, 16][(trial >> 2) % 4]!;
      if (e % g) continue;
      const r = g * (1 + (trial % 3));
      const zipf = 0.6 + rand() * 1.2;
      const load = Array.from({ length: e }, (_, i) => Math.round(1e5 / (i + 1) ** zipf * (0.5 + rand())));
      const ours = planPlacement(load, g, r);
      const eplb = eplbPlacement(load, g, r);
      expect(ours.slots).toHaveLength(e + r);
      expect(ours.replicas.reduce((a, b) => a + b, 0)).toBe(e + r);
      for (let x = 0; x < e; x++) expect(ours.slots.filter((s) => s === x)).toHaveLength(ours.replicas[x]!);
      expect(ours.deviceLoad.reduce((a, b) => a + b, 0)).toBeCloseTo(load.reduce((a, b) => a + b, 0), 3);
      expect(ours.balancedness).toBeGreaterThanOrEqual(eplb.balancedness - 1e-12);
      if (ours.balancedness > eplb.balancedness + 1e-9) better++;
    }
    expect(better).toBeGreaterThan(0);
  }, 60_000); // a few seconds alone; the whole unit suite shares 2 cores
});
