import { describe, expect, it } from 'vitest';
import { buildReport, SERIES_METRICS } from '../../cli/routing-report';
import { failingFindings, parseFailOn, reportJson, reportText } from '../../cli/commands/report';
import { parseTarget } from '../../cli/commands/export';
import { reportCsvFiles } from '../../cli/export/csv';
import { wandbRows } from '../../cli/export/wandb';
import { CliError } from '../../cli/errors';
import { formatProcesses } from '../../cli/commands/list';
import { E, fixtureRecording, LOGSUMEXP, PID, ROUTER_ENTROPY, T0, TOKENS_PER_PASS } from './recording-fixture';

// Layer 1 routes [16, 10, 6, 0] of 32 assignments per pass.
const p1 = [16, 10, 6].map((c) => c / 32);
const layer1LoadEntropy = -p1.reduce((s, p) => s + p * Math.log(p), 0) / Math.log(E);

describe('routing report of a recording', () => {
  const report = buildReport(fixtureRecording(), { stepS: 1, windowS: 30 });

  it('gives per-layer metrics over the whole recording, from attach to the last snapshot', () => {
    expect(report.pid).toBe(PID);
    expect(report.window).toEqual({ passes: 200, seconds: 19.5, tokens: 200 * TOKENS_PER_PASS, fromPass: 0, toPass: 200 });
    const [l0, l1] = report.layers;
    expect(l0).toMatchObject({ layer: 0, name: 'model.layers.0.mlp', experts: 4, topK: 2, tokens: 3200, balancedness: 1, maxVio: 0, deadExpertIds: [], deadExperts: 0 });
    expect(l0!.loadEntropy).toBeCloseTo(1, 12);
    expect(l0!.routerEntropy).toBeCloseTo(ROUTER_ENTROPY[0]!, 12);
    expect(l0!.zLoss).toBeCloseTo(LOGSUMEXP[0]! ** 2, 12);
    expect(l0!.msPerPass).toBeCloseTo(2, 12);
    expect(l1).toMatchObject({ balancedness: 0.5, maxVio: 1, deadExpertIds: [3], deadExperts: 1, counts: [3200, 2000, 1200, 0] });
    expect(l1!.loadEntropy).toBeCloseTo(layer1LoadEntropy, 12);
    expect(l1!.zLoss).toBeCloseTo(4, 12);
    expect(l1!.msPerPass).toBeCloseTo(6, 12);
    expect(report.findings.map((f) => [f.kind, f.layer, f.experts])).toEqual([['dead_expert', 1, [3]]]);
  });

  it('follows the metrics over time with the panel trailing window, one point per step with new passes', () => {
    const points = report.series.points;
    // Snapshots every 0.5 s; a point at the first one, then at the first snapshot of each next second, then the last.
    expect(points.map((p) => p.passes)).toEqual([...Array.from({ length: 20 }, (_, k) => 5 * (2 * k + 1)), 200]);
    expect(points[1]!.t).toBeCloseTo(1, 9);
    expect(points[1]!.ts).toBeCloseTo(T0 + 1.5, 6);
    for (const p of points) {
      expect(p.windowPasses).toBe(p.passes); // a 30 s window covers everything since attach here
      expect(p.layers[1]!.balancedness).toBe(0.5);
      expect(p.layers[1]!.loadEntropy).toBeCloseTo(layer1LoadEntropy, 12);
      expect(p.layers[0]!.routerEntropy).toBeCloseTo(0.5, 12);
      expect(p.layers[1]!.zLoss).toBeCloseTo(4, 12);
      // Dead experts are judged once the window holds 1000 tokens (DEFAULT_THRESHOLDS.minTokens).
      const judged = p.passes * TOKENS_PER_PASS >= 1000;
      expect(p.layers[1]!.deadExperts).toBe(judged ? 1 : null);
      expect(p.layers[0]!.deadExperts).toBe(judged ? 0 : null);
      expect(p.expertLoad[1]).toEqual([16, 10, 6, 0].map((c) => c * p.windowPasses));
    }
  });

  it('uses the trailing window it is given', () => {
    const short = buildReport(fixtureRecording(), { stepS: 1, windowS: 2 });
    expect(short.series.points.map((p) => p.windowPasses).slice(0, 4)).toEqual([5, 15, 20, 20]);
    expect(short.series.points.every((p) => p.layers[1]!.deadExperts === null)).toBe(true); // 320 tokens: too few to judge
  });

  it('reads as text and as JSON (no NaN, no per-expert series)', () => {
    const text = reportText(report, 'run.moerec');
    expect(text).toMatch(/^run\.moerec: process 4242 \(train\.py --moe\)/);
    expect(text).toContain('dead_expert  model.layers.1.mlp (layer 1): expert 3 received no tokens in the last 3,200 tokens');
    expect(text).toMatch(/\n\s+1\s+4\s+2\s+3,200\s+0\.500\s+1\.000\s+0\.\d{3}\s+0\.250\s+4\.00\s+3\s+6\.000\s+model\.layers\.1\.mlp/);
    expect(text).toMatch(/\n\s+0\s+4\s+2\s+3,200\s+1\.000\s+0\.000\s+1\.000\s+0\.500\s+9\.00\s+none\s+2\.000\s+model\.layers\.0\.mlp/);
    const json = JSON.parse(reportJson(report));
    expect(json.series.points[0].expertLoad).toBeUndefined();
    expect(json.series.points[0].layers[0].deadExperts).toBeNull();
    expect(json.layers[1].deadExpertIds).toEqual([3]);
  });

  it('fails CI only on the kinds named in --fail-on, and refuses unknown kinds', () => {
    expect(failingFindings(report, parseFailOn('dead_expert,collapse'))).toHaveLength(1);
    expect(failingFindings(report, parseFailOn('collapse,nan_logits'))).toHaveLength(0);
    expect(() => parseFailOn('dead_experts')).toThrow(/unknown finding kind "dead_experts"/);
    expect(() => parseFailOn(',')).toThrow(CliError);
    expect(() => parseTarget('tensorbored')).toThrow('unknown export target "tensorbored" (targets: tensorboard, perfetto, wandb, csv)');
  });

  it('gives W&B and CSV the same numbers under the TensorBoard names', () => {
    const rows = wandbRows(report);
    expect(rows.map((r) => r.step)).toEqual(report.series.points.map((p) => p.passes));
    expect(rows.at(-1)!.values['moe_balancedness/layer_1']).toBe(0.5);
    expect(rows.at(-1)!.values['moe_dead_experts/layer_1']).toBe(1);
    expect('moe_dead_experts/layer_1' in rows[0]!.values).toBe(false); // not judged yet: left out, not 0
    const csv = reportCsvFiles(report);
    expect(csv['series.csv']!.split('\n')[0]).toBe(`seconds,passes,window_passes,layer,${SERIES_METRICS.map((m) => m.tag).join(',')}`);
    expect(csv['series.csv']!.trim().split('\n')).toHaveLength(1 + 2 * report.series.points.length);
    expect(csv['layers.csv']!.split('\n')[2]).toMatch(/^1,model\.layers\.1\.mlp,4,2,3200,0\.5,1,/);
    expect(csv['expert_counts.csv']!.trim().split('\n').slice(-1)[0]).toBe('1,3,0');
  });
});

describe('list', () => {
  it('prints one line per process, even for a `python -c` program with newlines', () => {
    const text = formatProcesses([
      { pid: 7, cmdline: 'python -c import torch\nwhile True: pass', python: '3.11', torch: true, probe: false, attached: false },
      { pid: 12345, cmdline: 'python -m moe_probe run train.py', python: '3.12', torch: true, probe: true, attached: false },
    ]);
    expect(text.split('\n')).toEqual([
      'PID    PYTHON  PROBE  COMMAND',
      '7      3.11           python -c import torch while True: pass',
      '12345  3.12    probe  python -m moe_probe run train.py',
    ]);
    expect(formatProcesses([])).toMatch(/^No Python process with torch loaded/);
  });
});
