/**
 * A recording's report as CSV files for spreadsheets and pandas: the same numbers as
 * `report --json`. layers.csv: one row per layer over the whole recording; expert_counts.csv:
 * one row per (layer, expert); series.csv: one row per (point of the series, layer).
 */
import { SERIES_METRICS, type RoutingReport } from '../routing-report';

const cell = (x: number | string | null) => {
  if (x === null) return '';
  if (typeof x === 'number') return Number.isFinite(x) ? String(x) : '';
  return /[",\n]/.test(x) ? `"${x.replace(/"/g, '""')}"` : x;
};
const line = (cells: Array<number | string | null>) => cells.map(cell).join(',');

export function reportCsvFiles(report: RoutingReport): Record<string, string> {
  const metrics = SERIES_METRICS.map((m) => m.tag);
  const layers = [line(['layer', 'name', 'experts', 'top_k', 'tokens', ...metrics, 'dead_expert_ids', 'cv', 'gini', 'effective_experts', 'nan_logits', 'inf_logits', 'dropped_tokens', 'ms_per_pass'])];
  for (const l of report.layers) {
    layers.push(line([l.layer, l.name, l.experts, l.topK, l.tokens, ...SERIES_METRICS.map((m) => l[m.key]),
      l.deadExpertIds === null ? null : l.deadExpertIds.join(' '), l.cv, l.gini, l.effectiveExperts, l.nanLogits, l.infLogits, l.droppedTokens, l.msPerPass]));
  }
  const counts = [line(['layer', 'expert', 'count'])];
  for (const l of report.layers) l.counts.forEach((c, e) => counts.push(line([l.layer, e, c])));
  const series = [line(['seconds', 'passes', 'window_passes', 'layer', ...metrics])];
  for (const p of report.series.points) p.layers.forEach((l, i) => series.push(line([p.t, p.passes, p.windowPasses, i, ...SERIES_METRICS.map((m) => l[m.key])])));
  return { 'layers.csv': layers.join('\n') + '\n', 'expert_counts.csv': counts.join('\n') + '\n', 'series.csv': series.join('\n') + '\n' };
}
