/** The current metrics as CSV and JSON, for export. DOM-free. */
import type { ExplanationMessage } from '../../src/protocol/panel';
import { completeness, parameterFindings, type ExpertParameterLayer } from '../../src/analysis';
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

/** What the probe answered on request, exported beside the metrics when there is any. */
export interface RequestedResults {
  explanations?: readonly ExplanationMessage[];
  expertParams?: readonly ExpertParameterLayer[];
}

export function metricsJson(a: Analysis, requested: RequestedResults = {}): string {
  const label = (layer: number) => a.rows[layer]?.label ?? `layer ${layer}`;
  const matrix = (m: Float32Array | null, E: number) => (m ? Array.from({ length: E }, (_, i) => Array.from(m.subarray(i * E, (i + 1) * E))) : null);
  const vector = (v: Float64Array | null) => (v ? Array.from(v) : null);
  const out: Record<string, unknown> = {
    pid: a.pid, model: a.model, passes: a.passes,
    window: { passes: a.window.passes, seconds: a.window.seconds, tokens: a.window.tokens, fromPass: a.window.fromPass, toPass: a.window.toPass },
    thresholds: a.thresholds,
    layers: a.rows.map((r) => ({ ...r, counts: Array.from(a.window.counts.subarray(r.offset, r.offset + r.experts)) })),
    findings: a.findings,
    profile: a.profile,
  };
  if (requested.explanations?.length) {
    // each with its completeness check, as the panel shows it
    out.explanations = requested.explanations.map(({ type: _type, pid: _pid, ...e }) => ({
      ...e, layerName: label(e.layer),
      completeness: { logit: completeness(e.igLogit, e.logit, e.baselineLogit), prob: completeness(e.igProb, e.prob, e.baselineProb) },
    }));
  }
  if (requested.expertParams?.length) {
    out.expertParameters = {
      layers: requested.expertParams.map((p) => ({
        layer: p.layer, name: label(p.layer), experts: p.experts, computeExperts: p.computeExperts, layout: p.layout, groups: p.groups,
        params: p.params, routerNorms: vector(p.routerNorms), routerBiasName: p.routerBiasName, routerBias: vector(p.routerBias),
        expertNorms: vector(p.expertNorms), routerCosine: matrix(p.routerCosine, p.experts), weightCosine: matrix(p.weightCosine, p.experts),
        seconds: p.seconds, peakBytes: p.peakBytes, notes: p.notes,
      })),
      findings: parameterFindings(requested.expertParams, label),
    };
  }
  return JSON.stringify(out, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
}
