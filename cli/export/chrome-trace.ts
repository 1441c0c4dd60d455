/**
 * A recording as a trace in the Trace Event Format (the JSON that Chrome DevTools' Performance
 * panel, chrome://tracing and Perfetto's UI open). Between two consecutive counts snapshots of
 * the recording (an interval of one or more whole passes):
 *
 * - a slice on the "forward passes" track spanning the interval, named after the passes it holds;
 * - per MoE layer, a slice on that layer's own track, starting with the interval, as long as the
 *   time the probe measured inside the layer's MoE block over those passes (args: ms per pass).
 *   The probe sums block time per snapshot, not per pass, so an interval of n passes shows the
 *   layer's n blocks as one slice rather than n made-up ones;
 * - counters: each layer's expert load (share of the interval's assignments per expert), its
 *   normalized load entropy and router entropy, and ms per pass per layer.
 *
 * Times are microseconds since the recording's first counts snapshot. All metrics come from
 * src/analysis, the same functions the panel uses.
 */
import { layerHealth, normalizedLoadEntropy, windowDelta } from '../../src/analysis';
import { HEALTH_COLUMNS } from '../../src/protocol/probe';
import type { JobUpdate } from '../../src/protocol/panel';
import type { Recording } from '../../panels/engine/recording';
import { updateLayerCounts, type RoutingReport } from '../routing-report';

export interface TraceEvent {
  name: string;
  ph: 'X' | 'C' | 'M';
  pid: number;
  tid: number;
  ts?: number;
  dur?: number;
  cat?: string;
  args?: Record<string, unknown>;
}

export interface ChromeTrace {
  traceEvents: TraceEvent[];
  displayTimeUnit: 'ms';
  otherData: Record<string, string>;
}

export const PASSES_TID = 1;
/** Layer l's track. */
export const layerTid = (l: number) => 100 + l;

const us = (seconds: number) => Math.round(seconds * 1e6);
const round = (x: number, digits = 6) => Math.round(x * 10 ** digits) / 10 ** digits;

export function chromeTrace(recording: Recording, report: RoutingReport): ChromeTrace {
  const pid = report.pid;
  const updates = recording.messages.filter((m): m is JobUpdate => m.type === 'update' && m.model === report.model.id);
  const t0 = updates[0]?.ts ?? 0;
  const command = report.job?.argv.join(' ') ?? '';
  const events: TraceEvent[] = [
    { name: 'process_name', ph: 'M', pid, tid: 0, args: { name: `MoE job ${pid}${command ? `: ${command.slice(0, 80)}` : ''}` } },
    { name: 'thread_name', ph: 'M', pid, tid: PASSES_TID, args: { name: 'forward passes' } },
    { name: 'thread_sort_index', ph: 'M', pid, tid: PASSES_TID, args: { sort_index: 0 } },
  ];
  report.layers.forEach((layer, l) => {
    events.push({ name: 'thread_name', ph: 'M', pid, tid: layerTid(l), args: { name: `MoE layer ${l} (${layer.name})` } });
    events.push({ name: 'thread_sort_index', ph: 'M', pid, tid: layerTid(l), args: { sort_index: 1 + l } });
  });

  for (let i = 1; i < updates.length; i++) {
    const prev = updates[i - 1]!;
    const u = updates[i]!;
    const passes = u.passes - prev.passes;
    if (passes <= 0 || !(u.ts > prev.ts)) continue; // no pass in between, or a new attach
    const ts = us(prev.ts - t0);
    const dur = us(u.ts - prev.ts);
    const phase = { prefill: (u.prefill ?? 0) - (prev.prefill ?? 0), decode: (u.decode ?? 0) - (prev.decode ?? 0) };
    events.push({
      name: passes === 1 ? `pass ${u.passes}` : `passes ${prev.passes + 1}-${u.passes}`, ph: 'X', cat: 'moe', pid, tid: PASSES_TID, ts, dur,
      args: { passes, ...phase },
    });
    const health = u.health && prev.health ? windowDelta(u.health, prev.health) : null;
    const msPerPass: Record<string, number> = {};
    const loadEntropy: Record<string, number> = {};
    const routerEntropy: Record<string, number> = {};
    for (let l = 0; l < u.layers; l++) {
      const now = updateLayerCounts(u, l);
      const then = updateLayerCounts(prev, l);
      const load = now.map((c, e) => c - then[e]!);
      const total = load.reduce((a, b) => a + b, 0);
      if (u.timeS && prev.timeS) {
        const blockS = Math.max(0, u.timeS[l]! - prev.timeS[l]!);
        const ms = (1000 * blockS) / passes;
        msPerPass[`layer ${l}`] = round(ms);
        events.push({
          name: `MoE layer ${l}`, ph: 'X', cat: 'moe', pid, tid: layerTid(l), ts, dur: Math.min(dur, us(blockS)),
          args: { passes, ms_per_pass: round(ms), assignments: total },
        });
      }
      if (total > 0) {
        const shares: Record<string, number> = {};
        load.forEach((c, e) => (shares[`expert ${e}`] = round(c / total)));
        events.push({ name: `layer ${l} expert load`, ph: 'C', pid, tid: PASSES_TID, ts, args: shares });
        loadEntropy[`layer ${l}`] = round(normalizedLoadEntropy(load));
      }
      if (health && health.length === u.layers * HEALTH_COLUMNS.length) {
        const h = layerHealth(health, l, u.widths[l]!);
        if (Number.isFinite(h.normalizedEntropy)) routerEntropy[`layer ${l}`] = round(h.normalizedEntropy);
      }
    }
    for (const [name, args] of [['ms per pass', msPerPass], ['load entropy', loadEntropy], ['router entropy', routerEntropy]] as const) {
      if (Object.keys(args).length) events.push({ name, ph: 'C', pid, tid: PASSES_TID, ts, args });
    }
  }
  return {
    traceEvents: events,
    displayTimeUnit: 'ms',
    otherData: {
      source: 'moe-devtools export --to perfetto',
      recorded_pid: String(pid),
      first_counts_at: new Date(t0 * 1000).toISOString(),
    },
  };
}
