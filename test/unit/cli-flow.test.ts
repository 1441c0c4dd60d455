/**
 * `moe-devtools flow`: the routing flow of a recording's token records, the same numbers the
 * panel's Flow view shows when it replays that recording (its Analyzer, over every pass).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { HostMessage } from '../../src/protocol/panel';
import { flowJson, flowText, recordingFlow, tokenRecords } from '../../cli/commands/flow';
import { main } from '../../cli/main';
import { Analyzer } from '../../panels/engine/analyzer';
import { parseRecording, serializeRecording, withPid } from '../../panels/engine/recording';
import { fixtureMessages, PID, T0 } from './recording-fixture';

/** The fixture (2 layers x 4 experts, top-2) with token records: pass p, 2 tokens, split in two parts by layer. */
function withTokens(): HostMessage[] {
  const messages = fixtureMessages();
  const out: HostMessage[] = [];
  for (const m of messages) {
    out.push(m);
    if (m.type !== 'update') continue;
    const pass = m.passes;
    out.push({ type: 'tokens', pid: PID, model: 0, pass, phase: 'prefill', tokenIds: [pass, 7], texts: null, layers: [{ layer: 0, n: 2, k: 2, ids: [pass % 4, (pass + 1) % 4, 0, 1], weights: [0.9, 0.1, 0.6, 0.4].map(Math.fround) }] }); // float32, as the probe sends them
    out.push({ type: 'tokens', pid: PID, model: 0, pass, phase: 'prefill', tokenIds: [pass, 7], texts: null, layers: [{ layer: 1, n: 2, k: 2, ids: [2, 3, (pass * 3) % 4, -1], weights: null }] });
  }
  return out;
}

describe('moe-devtools flow', () => {
  const recording = parseRecording(serializeRecording(PID, T0 * 1000, withTokens()));

  it('merges the parts of each pass and counts as the panel does when it replays the recording', () => {
    const records = tokenRecords(recording.messages, 0);
    expect(records).toHaveLength(40);
    expect(records[0]!.layers.map((l) => l.layer)).toEqual([0, 1]);
    for (const weighting of ['top1', 'slots', 'gates'] as const) {
      const cli = recordingFlow(recording, { from: 0, to: 1, weighting, filter: '' }).flow;
      const a = new Analyzer();
      a.ingestMany(withPid(recording.messages, -1));
      const panel = a.analyze(-1, { windowMode: 'all', views: { flow: { from: 0, to: 1, weighting, filter: '', through: null } } })!.views!.flow!.flow;
      expect(Array.from(cli.pairs[0]!.weight)).toEqual(Array.from(panel.pairs[0]!.weight));
      expect(Array.from(cli.pairs[0]!.src)).toEqual(Array.from(panel.pairs[0]!.src));
      expect(cli.tokens).toBe(80);
      expect(cli.pairs[0]!.total).toBeCloseTo(80, 9);
    }
    // By hand, top-1: token 1 of every pass goes 0 -> (3p mod 4); passes 5, 10, ..., 200 (p = 5i).
    const top1 = recordingFlow(recording, { from: 0, to: 1, weighting: 'top1', filter: '#7' }).flow;
    const want = new Map<string, number>();
    for (let i = 1; i <= 40; i++) want.set(`0>${(15 * i) % 4}`, (want.get(`0>${(15 * i) % 4}`) ?? 0) + 1);
    expect(new Map(Array.from(top1.pairs[0]!.weight, (w, j) => [`${top1.pairs[0]!.src[j]}>${top1.pairs[0]!.dst[j]}`, w]))).toEqual(want);
    const ranged = recordingFlow(recording, { from: 0, to: 1, weighting: 'top1', filter: '', fromPass: 100, toPass: 150 }).flow;
    expect(ranged.passes).toEqual([100, 105, 110, 115, 120, 125, 130, 135, 140, 145, 150]);
  });

  it('leaves out token records that come before the first counts update, as the panel replay does', () => {
    // A recording started mid-stream can begin with a pass's token record ahead of the next update.
    const messages = withTokens();
    const first = messages.findIndex((m) => m.type === 'update');
    const early = { ...(messages[first + 1] as Extract<HostMessage, { type: 'tokens' }>), pass: 1 };
    messages.splice(first, 0, early);
    const early2 = parseRecording(serializeRecording(PID, T0 * 1000, messages));
    const cli = recordingFlow(early2, { from: 0, to: 1, weighting: 'top1', filter: '' }).flow;
    const a = new Analyzer();
    a.ingestMany(withPid(early2.messages, -1));
    const panel = a.analyze(-1, { windowMode: 'all', views: { flow: { from: 0, to: 1, weighting: 'top1', filter: '', through: null } } })!.views!.flow!.flow;
    expect(cli.passes).not.toContain(1);
    expect(cli.passes).toEqual(panel.passes);
    expect(Array.from(cli.pairs[0]!.weight)).toEqual(Array.from(panel.pairs[0]!.weight));
  });

  it('prints a table or JSON, and says clearly what is wrong with its arguments', async () => {
    const r = recordingFlow(recording, { from: 0, to: 1, weighting: 'top1', filter: '' });
    const text = flowText(r);
    expect(text).toMatch(/^80 sampled tokens from 40 passes \(5-200\); weighting: top1/);
    expect(text).toContain('model.layers.0.mlp (layer 0) -> model.layers.1.mlp (layer 1)');
    const json = JSON.parse(flowJson(r));
    expect(json.pairs[0].transitions.reduce((s: number, t: number[]) => s + t[2]!, 0)).toBe(80);

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-flow-'));
    const file = path.join(dir, 'run.moerec');
    fs.writeFileSync(file, serializeRecording(PID, T0 * 1000, withTokens()));
    const writes: string[] = [];
    const stdout = process.stdout.write.bind(process.stdout);
    const stderr = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((s: string) => (writes.push(s), true)) as typeof process.stdout.write;
    process.stderr.write = ((s: string) => (writes.push(s), true)) as typeof process.stderr.write;
    try {
      expect(await main(['flow', file, '--from', '0', '--to', '1', '--json'])).toBe(0);
      expect(JSON.parse(writes.join('')).tokens).toBe(80);
      writes.length = 0;
      expect(await main(['flow', file, '--from', '1', '--to', '0'])).toBe(2);
      expect(writes.join('')).toMatch(/--to should be a later layer than --from/);
      writes.length = 0;
      expect(await main(['flow', file, '--from', '0', '--to', '5'])).toBe(2);
      expect(writes.join('')).toMatch(/--to 5: the recording's model has layers 0 to 1/);
      writes.length = 0;
      expect(await main(['flow', file, '--from', '0', '--to', '1', '--weighting', 'all'])).toBe(2);
      expect(writes.join('')).toMatch(/--weighting should be one of top1, slots, gates/);
      writes.length = 0;
      fs.writeFileSync(file, serializeRecording(PID, T0 * 1000, fixtureMessages()));
      expect(await main(['flow', file, '--from', '0', '--to', '1'])).toBe(2);
      expect(writes.join('')).toMatch(/holds no per-token records/);
    } finally {
      process.stdout.write = stdout;
      process.stderr.write = stderr;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
