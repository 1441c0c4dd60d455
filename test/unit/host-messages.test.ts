/** The host's translation of probe frames into panel messages, for the frames training runs add. */
import { describe, expect, it } from 'vitest';
import { jobUpdate, lossesUpdate, oneLayer } from '../../native-host/src/host';
import { parseProbeFrame, type ProbeCounts, type ProbeLosses } from '../../src/protocol/probe';
import { int64Bytes } from './layer-fixture';

function float64Bytes(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setFloat64(i * 8, v, true));
  return out;
}

describe('host messages of training runs', () => {
  it('turns a losses frame into rows per pass, NaN (not computed) as null', () => {
    const frame = parseProbeFrame({
      t: 'losses', model: 0, passes: [5, 6], ts: 1700000200.5,
      aux: float64Bytes([2.015625, 2.25, 2.0078125, NaN]), z: float64Bytes([0.5, 0.75, 0.625, 0.375]),
      model_aux: float64Bytes([2.1328125, NaN]), loss: float64Bytes([5.5, 5.25]),
    }) as ProbeLosses;
    expect(lossesUpdate(42, frame)).toEqual({
      type: 'losses', pid: 42, model: 0, passes: [5, 6], ts: 1700000200.5,
      aux: [[2.015625, 2.25], [2.0078125, null]], z: [[0.5, 0.75], [0.625, 0.375]], modelAux: [2.1328125, null], loss: [5.5, 5.25],
    });
  });

  it('carries forward and backward passes and backward time per layer into updates, and into one layer of them', () => {
    const frame = parseProbeFrame({
      t: 'counts', model: 0, seq: 9, ts: 1.5, passes: 6, layers: 2, widths: [4, 4], counts: int64Bytes([1, 2, 3, 4, 5, 6, 7, 8]),
      tokens: int64Bytes([5, 5]), dropped: 0, train: 5, backward: 4, backward_s: [0.0625, 0.125],
    }) as ProbeCounts;
    const update = jobUpdate(3, frame, 0);
    expect([update.train, update.backward, update.backwardS]).toEqual([5, 4, [0.0625, 0.125]]);
    expect(oneLayer(update, 1).backwardS).toEqual([0.125]);
    // An inference job's updates carry none of these.
    const plain = jobUpdate(3, { ...frame, train: undefined, backward: undefined, backward_s: undefined }, 0);
    expect('train' in plain || 'backward' in plain || 'backwardS' in plain).toBe(false);
  });
});
