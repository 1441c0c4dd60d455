/**
 * The panel's on-request analyses, between the panel's JSON and the probe's frames: explain
 * a routing decision, analyse the experts' weights. The host only relays them (the probe does
 * the work on a thread of its own); answers are turned into panel messages under the 1 MiB
 * native-messaging limit.
 */
import type { ExpertParamsMessage, ExplainRequest, ExplanationMessage, HostMessage, PanelRequest } from '../../src/protocol/panel';
import { float32s, float64s, int32s, type HostToProbe, type ProbeExpertParams, type ProbeExplanation } from '../../src/protocol/probe';

/** The probe frame for a panel request. */
export function explainFrame(r: ExplainRequest): HostToProbe {
  return {
    t: 'explain', id: r.id, model: r.model, pass: r.pass, index: r.index, layer: r.layer, expert: r.expert,
    steps: r.steps ?? 32, baseline: r.baseline ?? 'zero',
    ...(r.baselineToken !== undefined ? { baseline_token: r.baselineToken } : {}),
    ...(r.maxSeconds !== undefined ? { max_seconds: r.maxSeconds } : {}),
    ...(r.maxMB !== undefined ? { max_mb: r.maxMB } : {}),
  };
}

export function expertParamsFrame(r: Extract<PanelRequest, { type: 'expert-params' }>): HostToProbe {
  return {
    t: 'expert-params', id: r.id, model: r.model,
    ...(r.layers ? { layers: r.layers } : {}), ...(r.chunkMB !== undefined ? { chunk_mb: r.chunkMB } : {}),
  };
}

export function explanationMessage(pid: number, f: ProbeExplanation): ExplanationMessage {
  return {
    type: 'explanation', pid, id: f.id, model: f.model, pass: f.pass, index: f.index, layer: f.layer, expert: f.expert,
    row: f.row, position: f.position, tokenIds: int32s(f.token_ids), texts: f.texts, steps: f.steps,
    baseline: f.baseline, baselineToken: f.baseline_token, probKind: f.prob_kind, logit: f.logit, prob: f.prob,
    baselineLogit: f.baseline_logit, baselineProb: f.baseline_prob,
    // finite: the probe refuses an explanation with a NaN or Inf in it
    gxiLogit: float64s(f.gxi_logit), gxiProb: float64s(f.gxi_prob), igLogit: float64s(f.ig_logit), igProb: float64s(f.ig_prob),
    recomputed: int32s(f.recomputed), seconds: f.seconds, peakBytes: f.peak_bytes, batch: f.batch, device: f.device, notes: f.notes,
  };
}

/** Non-finite values as null: JSON has no NaN (the panel reads null back as NaN). */
function finite(values: number[]): Array<number | null> {
  return values.map((v) => (Number.isFinite(v) ? v : null));
}

/** Similarities to 5 decimals: plenty for a 0.99 threshold, and a third of the JSON. */
const round5 = (v: number | null) => (v === null ? null : Math.round(v * 1e5) / 1e5);

/**
 * One layer's expert-params frame as panel messages of at most `maxBytes` of JSON each: the
 * vectors in the first, the [E x E] matrices cut into row ranges.
 */
export function expertParamsMessages(pid: number, f: ProbeExpertParams, maxBytes: number): ExpertParamsMessage[] {
  const E = f.experts;
  const vector = (b: Uint8Array | null) => (b ? finite(float64s(b)) : null);
  const matrix = (b: Uint8Array | null) => (b ? finite(float32s(b)).map(round5) : null);
  const router = matrix(f.router_cosine);
  const weights = matrix(f.weight_cosine);
  const base: ExpertParamsMessage = {
    type: 'expert-params', pid, id: f.id, model: f.model, layer: f.layer, part: f.part, parts: f.parts, experts: E,
    computeExperts: f.compute_experts, rowStart: 0, rowEnd: E, routerName: f.router_name, routerNorms: vector(f.router_norms),
    routerCosine: router, routerBiasName: f.router_bias_name, routerBias: vector(f.router_bias), layout: f.layout, groups: f.groups,
    params: f.params, expertNorms: vector(f.expert_norms), groupNorms: vector(f.group_norms), weightCosine: weights,
    seconds: f.seconds, peakBytes: f.peak_bytes, notes: f.notes,
  };
  const rows = (m: Array<number | null> | null, start: number, end: number) => (m ? m.slice(start * E, end * E) : null);
  // A matrix value takes at most 9 bytes of JSON ("-0.12345,"; null is 5): the bound decides how
  // many rows a part holds, without writing out the matrices to measure them.
  const withoutMatrices = JSON.stringify({ ...base, routerCosine: null, weightCosine: null }).length;
  const perRow = 9 * E * ((router ? 1 : 0) + (weights ? 1 : 0));
  if (withoutMatrices + perRow * E <= maxBytes) return [base];
  const fit = Math.max(1, Math.floor((maxBytes - withoutMatrices) / Math.max(1, perRow)));
  const out: ExpertParamsMessage[] = [];
  for (let start = 0; start < E; start += fit) {
    const end = Math.min(E, start + fit);
    const part: ExpertParamsMessage = { ...base, rowStart: start, rowEnd: end, routerCosine: rows(router, start, end), weightCosine: rows(weights, start, end) };
    if (start > 0) Object.assign(part, { routerNorms: null, routerBias: null, expertNorms: null, groupNorms: null });
    out.push(part);
  }
  return out;
}

/** The probe's refusal as a panel message. */
export function refusedMessage(pid: number, f: { id: number; request: 'explain' | 'expert-params' | 'unknown'; code: string; message: string }): HostMessage {
  return { type: 'refused', pid, id: f.id, request: f.request, code: f.code, message: f.message };
}
