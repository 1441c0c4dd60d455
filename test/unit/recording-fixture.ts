/**
 * A synthetic recording with numbers simple enough to work out by hand, for the command
 * line's report and exports: 2 layers of 4 experts, top-2, 10 passes per second, one counts
 * snapshot every 0.5 s (5 passes) for 20 s.
 *
 * Per pass: layer 0 routes [8, 8, 8, 8] (even), layer 1 routes [16, 10, 6, 0] (expert 3 dead,
 * expert 0 at twice the mean); 16 tokens per pass. Router health: every token measured,
 * normalized router entropy 0.5 in layer 0 and 0.25 in layer 1, logsumexp 3 (z-loss 9) in
 * layer 0 and 2 (z-loss 4) in layer 1. Time in the MoE block: 2 ms per pass in layer 0, 6 ms
 * in layer 1.
 */
import type { HostMessage, JobUpdate } from '../../src/protocol/panel';
import { HEALTH_COLUMNS } from '../../src/protocol/probe';
import { serializeRecording, parseRecording, type Recording } from '../../panels/engine/recording';
import { layerInfo } from './layer-fixture';

export const PID = 4242;
export const L = 2;
export const E = 4;
export const TOP_K = 2;
export const TOKENS_PER_PASS = 16;
export const PER_PASS = [[8, 8, 8, 8], [16, 10, 6, 0]];
export const PASSES_PER_UPDATE = 5;
export const UPDATE_EVERY_S = 0.5;
export const UPDATES = 40;
export const T0 = 1_700_000_000;
export const ROUTER_ENTROPY = [0.5, 0.25];
export const LOGSUMEXP = [3, 2];
export const BLOCK_MS_PER_PASS = [2, 6];

export const attached: HostMessage = {
  type: 'attached', pid: PID, method: 'socket', ms: 3, python: '3.11.7', framework: 'torch', frameworkVersion: '2.13.0',
  argv: ['train.py', '--moe'],
  models: [{
    id: 0, class: 'TinyMoE', model_type: 'tiny', device: 'cpu', dtype: 'float32',
    layers: [0, 1].map((i) => layerInfo(i, E, TOP_K)),
  }],
};

export function update(i: number): JobUpdate {
  const passes = PASSES_PER_UPDATE * i;
  const tokens = TOKENS_PER_PASS * passes;
  const health: number[] = [];
  for (let l = 0; l < L; l++) {
    const row = new Array<number>(HEALTH_COLUMNS.length).fill(0);
    row[HEALTH_COLUMNS.indexOf('logit_tokens')] = tokens;
    row[HEALTH_COLUMNS.indexOf('entropy_sum')] = tokens * ROUTER_ENTROPY[l]! * Math.log(E);
    row[HEALTH_COLUMNS.indexOf('zloss_sum')] = tokens * LOGSUMEXP[l]! ** 2;
    health.push(...row);
  }
  return {
    type: 'update', pid: PID, model: 0, passes, layers: L, widths: new Array(L).fill(E),
    counts: PER_PASS.flat().map((c) => c * passes), tokens: new Array(L).fill(tokens), ts: T0 + UPDATE_EVERY_S * i, dropped: 0, health,
    timeS: BLOCK_MS_PER_PASS.map((ms) => (ms / 1000) * passes), probeS: 0, prefill: passes, decode: 0,
  };
}

export function fixtureMessages(): HostMessage[] {
  const messages: HostMessage[] = [attached];
  for (let i = 1; i <= UPDATES; i++) messages.push(update(i));
  messages.push({ type: 'detached', pid: PID, reason: 'requested' });
  return messages;
}

/** The fixture as the .moerec text the panel and `record` write, parsed back. */
export function fixtureRecording(): Recording {
  return parseRecording(serializeRecording(PID, T0 * 1000, fixtureMessages()));
}
