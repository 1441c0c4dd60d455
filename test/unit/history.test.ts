import { describe, expect, it } from 'vitest';
import type { ProbeCounts, ProbeTokens } from '../../src/protocol/probe';
import { History } from '../../native-host/src/history';

function counts(ts: number, layers = 2, experts = 4, backing?: Uint8Array): ProbeCounts {
  const bytes = backing ?? new Uint8Array(layers * experts * 8);
  return {
    t: 'counts', model: 0, seq: ts, ts, passes: ts, layers, widths: new Array(layers).fill(experts), counts: bytes.subarray(0, layers * experts * 8),
    tokens: new Uint8Array(layers * 8), dropped: 0,
  };
}

function tokens(pass: number): ProbeTokens {
  return { t: 'tokens', model: 0, pass, phase: 'decode', n: 1, k: 2, token_ids: new Uint8Array(4), texts: ['a'], layers: [{ layer: 0, n: 1, k: 2, ids: new Uint8Array(8), weights: null }] };
}

describe('History', () => {
  it('never holds more than its cap, evicting the oldest entries first and counting them', () => {
    // Each counts entry: 2 x 4 int64 counts (64 bytes), 2 int64 tokens (16), 2 widths (16)
    // + 256 bookkeeping = 352 bytes.
    const history = new History(1100);
    for (let ts = 1; ts <= 10; ts++) history.addCounts(7, counts(ts));
    expect(history.used).toBe(3 * 352);
    expect(history.size).toBe(3);
    expect(history.evicted).toBe(7);
    expect(history.query(7, 'counts').map((e) => e.ts)).toEqual([8, 9, 10]);
  });

  it('filters by job, kind and time window', () => {
    const history = new History(1 << 20);
    history.addCounts(1, counts(1));
    history.addCounts(2, counts(2));
    history.addCounts(1, counts(3));
    history.addTokens(1, 3.5, tokens(3));
    expect(history.query(1, 'counts', 2, 10).map((e) => e.ts)).toEqual([3]);
    expect(history.query(1, 'tokens').map((e) => e.frame.pass)).toEqual([3]);
    expect(history.query(3, 'counts')).toEqual([]);
  });

  it('stores copies, so a view into a large socket chunk does not keep the chunk alive', () => {
    const chunk = new Uint8Array(1 << 16);
    chunk[0] = 5;
    const history = new History(1 << 20);
    history.addCounts(1, counts(1, 2, 4, chunk));
    const stored = history.query(1, 'counts')[0].frame.counts;
    expect(stored.buffer).not.toBe(chunk.buffer);
    expect(stored.byteLength).toBe(64);
    chunk[0] = 9;
    expect(stored[0]).toBe(5);
  });

  it('lowering the cap evicts at once; an entry larger than the cap is refused and counted', () => {
    const history = new History(10_000);
    for (let ts = 1; ts <= 5; ts++) history.addCounts(1, counts(ts));
    history.setCap(750);
    expect(history.size).toBe(2);
    history.addCounts(1, counts(6, 64, 512));
    expect(history.size).toBe(2);
    expect(history.evicted).toBe(4);
  });
});
