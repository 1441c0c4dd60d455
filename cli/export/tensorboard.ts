/**
 * A TensorBoard event file for a recording: one event per point of the report's series, with
 * step = passes since attach and wall time = the probe's clock. Per layer L:
 *
 * - scalars `moe_<metric>/layer_L` for each SERIES_METRICS entry (balancedness, max_vio, ...),
 *   grouped by metric in TensorBoard so the layers of one metric sit side by side; a metric
 *   that was not measured (or, for dead_experts, could not be judged yet) is left out of that
 *   step rather than written as a made-up 0;
 * - a histogram `moe_expert_load/layer_L` of the expert ids the window's assignments went to:
 *   one bucket per expert, so its height over expert e is that expert's load.
 *
 * Values use the classic Summary.Value fields (simple_value, histo), which every TensorBoard
 * reads. Message layouts: tensorboard/compat/proto/{event,summary,histogram}.proto.
 */
import { SERIES_METRICS, type RoutingReport, type SeriesPoint } from '../routing-report';
import { ProtoWriter, tfRecord } from './tfrecord';

// Field numbers of tensorboard.Event, Summary, Summary.Value and HistogramProto.
const EVENT = { wallTime: 1, step: 2, fileVersion: 3, summary: 5 } as const;
const SUMMARY = { value: 1 } as const;
const VALUE = { tag: 1, simpleValue: 2, histo: 5 } as const;
const HISTO = { min: 1, max: 2, num: 3, sum: 4, sumSquares: 5, bucketLimit: 6, bucket: 7 } as const;

export const scalarTag = (metricTag: string, layer: number) => `moe_${metricTag}/layer_${layer}`;
export const histogramTag = (layer: number) => `moe_expert_load/layer_${layer}`;

/** TensorFlow's convention for the last bucket's upper edge. */
const DBL_MAX = Number.MAX_VALUE;

function writeHistogram(w: ProtoWriter, load: readonly number[]): void {
  let num = 0;
  let sum = 0;
  let sumSquares = 0;
  let min = Infinity;
  let max = -Infinity;
  load.forEach((count, expert) => {
    if (!(count > 0)) return;
    num += count;
    sum += expert * count;
    sumSquares += expert * expert * count;
    min = Math.min(min, expert);
    max = Math.max(max, expert);
  });
  if (!num) min = max = 0;
  // Bucket e holds expert e: its upper edge is e + 0.5 (the last one DBL_MAX).
  const limits = load.map((_, e) => (e === load.length - 1 ? DBL_MAX : e + 0.5));
  w.double(HISTO.min, min).double(HISTO.max, max).double(HISTO.num, num).double(HISTO.sum, sum).double(HISTO.sumSquares, sumSquares)
    .packedDoubles(HISTO.bucketLimit, limits).packedDoubles(HISTO.bucket, load);
}

function pointEvent(point: SeriesPoint): Uint8Array {
  const w = new ProtoWriter().double(EVENT.wallTime, point.ts).int64(EVENT.step, point.passes);
  w.message(EVENT.summary, (summary) => {
    point.layers.forEach((layer, l) => {
      for (const metric of SERIES_METRICS) {
        const value = layer[metric.key];
        if (value === null) continue;
        summary.message(SUMMARY.value, (v) => v.string(VALUE.tag, scalarTag(metric.tag, l)).float(VALUE.simpleValue, value));
      }
      const load = point.expertLoad[l];
      if (load) summary.message(SUMMARY.value, (v) => v.string(VALUE.tag, histogramTag(l)).message(VALUE.histo, (h) => writeHistogram(h, load)));
    });
  });
  return w.finish();
}

/** The whole event file: the file-version event TensorBoard expects first, then one event per point. */
export function tensorboardEvents(report: RoutingReport): Uint8Array {
  const first = report.series.points[0]?.ts ?? report.started / 1000;
  const records = [tfRecord(new ProtoWriter().double(EVENT.wallTime, first).string(EVENT.fileVersion, 'brain.Event:2').finish())];
  for (const point of report.series.points) records.push(tfRecord(pointEvent(point)));
  const out = new Uint8Array(records.reduce((n, r) => n + r.length, 0));
  let at = 0;
  for (const r of records) {
    out.set(r, at);
    at += r.length;
  }
  return out;
}

/** TensorBoard finds event files by "tfevents" in the name; the time and pid make the name unique. */
export function eventFileName(report: RoutingReport, hostname: string): string {
  const first = Math.floor(report.series.points[0]?.ts ?? report.started / 1000);
  return `events.out.tfevents.${first}.${hostname}.${report.pid}.moe-devtools`;
}
