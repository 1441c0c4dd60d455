/** The current metrics as CSV and JSON, for export. DOM-free. */
import type { Analysis } from './analyzer';

const num = (x: number) => (Number.isFinite(x) ? String(Math.round(x * 1e6) / 1e6) : '');

/** One row per layer with its window statistics, then one row per (layer, expert) with its window count. */
export function metricsCsv(a: Analysis): string {
  const out = ['layer,experts,top_k,tokens,max_vio,balancedness,cv,gini,normalized_load_entropy,effective_experts,zero_experts,router_entropy,z_loss,nan,inf,dropped_tokens,ms_per_pass'];
  for (const r of a.rows) {
    out.push([r.layer, r.experts, r.topK, num(r.tokens), num(r.maxVio), num(r.balancedness), num(r.cv), num(r.gini), num(r.normalizedEntropy), num(r.effectiveExperts),
      r.zeroExperts, num(r.routerEntropy), num(r.zLoss), r.nan, r.inf, r.droppedTokens, num(r.msPerPass)].join(','));
  }
  out.push('', 'layer,expert,count');
  for (let l = 0; l < a.layers; l++) for (let e = 0; e < a.experts; e++) out.push(`${l},${e},${a.window.counts[l * a.experts + e]}`);
  return out.join('\n') + '\n';
}

export function metricsJson(a: Analysis): string {
  return JSON.stringify({
    pid: a.pid, model: a.model, passes: a.passes,
    window: { passes: a.window.passes, seconds: a.window.seconds, tokens: a.window.tokens, fromPass: a.window.fromPass, toPass: a.window.toPass },
    thresholds: a.thresholds,
    layers: a.rows.map((r, l) => ({ ...r, counts: Array.from(a.window.counts.subarray(l * a.experts, (l + 1) * a.experts)) })),
    findings: a.findings,
    profile: a.profile,
  }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
}
