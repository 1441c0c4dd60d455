/** The current metrics as CSV and JSON, for export. DOM-free. */
import type { Analysis } from './analyzer';

const num = (x: number) => (Number.isFinite(x) ? String(Math.round(x * 1e6) / 1e6) : '');
/** A CSV field: quoted when it holds a comma, quote or newline. */
const text = (s: string) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);

/**
 * One row per layer with its window statistics (each layer with its own expert count, named by its
 * module path and the model's own layer number), then one row per (layer, expert) with its window count.
 */
export function metricsCsv(a: Analysis): string {
  const out = ['layer,name,model_layer,stack,kind,design,source,experts,identity_experts,top_k,tokens,max_vio,balancedness,cv,gini,' +
    'normalized_load_entropy,effective_experts,zero_experts,router_entropy,z_loss,nan,inf,dropped_tokens,ms_per_pass'];
  for (const r of a.rows) {
    const i = r.info;
    out.push([r.layer, text(i.name), i.model_index, text(i.stack), i.kind, i.design, i.source, r.experts, i.identity_experts, r.topK,
      num(r.tokens), num(r.maxVio), num(r.balancedness), num(r.cv), num(r.gini), num(r.normalizedEntropy), num(r.effectiveExperts),
      r.zeroExperts, num(r.routerEntropy), num(r.zLoss), r.nan, r.inf, num(r.droppedTokens), num(r.msPerPass)].join(','));
  }
  out.push('', 'layer,expert,count');
  for (const r of a.rows) for (let e = 0; e < r.experts; e++) out.push(`${r.layer},${e},${a.window.counts[r.offset + e]}`);
  return out.join('\n') + '\n';
}

export function metricsJson(a: Analysis): string {
  return JSON.stringify({
    pid: a.pid, model: a.model, passes: a.passes,
    window: { passes: a.window.passes, seconds: a.window.seconds, tokens: a.window.tokens, fromPass: a.window.fromPass, toPass: a.window.toPass },
    thresholds: a.thresholds,
    layers: a.rows.map((r) => ({ ...r, counts: Array.from(a.window.counts.subarray(r.offset, r.offset + r.experts)) })),
    findings: a.findings,
    profile: a.profile,
  }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
}
