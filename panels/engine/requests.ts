/**
 * What the panel asked the probe for and got back: explanations of routing decisions and the
 * experts' weight analysis, per job. DOM-free (the store keeps these; unit tests drive them).
 */
import type { ExpertParamsMessage, ExplanationMessage } from '../../src/protocol/panel';
import type { ExpertParameterLayer } from '../../src/analysis/experts';

export interface RequestStatus {
  id: number;
  pid: number;
  kind: 'explain' | 'expert-params';
  /** Date.now() when sent. */
  started: number;
  state: 'running' | 'done' | 'refused';
  /** The probe's reason, for a refused request. */
  code?: string;
  message?: string;
  /** For an explanation: which token, layer and expert (see explanationKey). */
  key?: string;
}

/** What identifies an explanation: the token (pass, index), the layer and the expert. */
export function explanationKey(e: { pass: number; index: number; layer: number; expert: number }): string {
  return `${e.pass}:${e.index}:${e.layer}:${e.expert}`;
}

/** The expert-params answer of one request, assembled layer by layer from its messages. */
export interface ExpertParamsResult {
  id: number;
  /** Layers asked for, and those complete so far. */
  parts: number;
  layers: Map<number, ExpertParameterLayer>;
  /** Rows of each layer's matrices received so far. */
  rows: Map<number, number>;
  model: number;
}

export function complete(result: ExpertParamsResult): boolean {
  if (result.layers.size < result.parts) return false;
  for (const [layer, p] of result.layers) if ((result.rows.get(layer) ?? 0) < p.experts) return false;
  return true;
}

const toNaN = (v: number | null) => (v === null ? NaN : v);
const vector = (values: Array<number | null> | null) => (values ? Float64Array.from(values, toNaN) : null);

/** Add one message of an expert-params answer (a new request id starts over). */
export function addExpertParams(result: ExpertParamsResult | undefined, m: ExpertParamsMessage): ExpertParamsResult {
  const out: ExpertParamsResult = result && result.id === m.id
    ? { ...result, layers: new Map(result.layers), rows: new Map(result.rows) }
    : { id: m.id, parts: m.parts, layers: new Map(), rows: new Map(), model: m.model };
  const E = m.experts;
  let layer = out.layers.get(m.layer);
  if (!layer) {
    layer = {
      layer: m.layer, experts: E, computeExperts: m.computeExperts, routerNorms: null,
      routerCosine: m.routerCosine ? new Float32Array(E * E).fill(NaN) : null, routerBias: null, routerBiasName: m.routerBiasName, routerName: m.routerName,
      expertNorms: null, groupNorms: null, groups: m.groups, weightCosine: m.weightCosine ? new Float32Array(E * E).fill(NaN) : null,
      layout: m.layout, params: m.params, seconds: m.seconds, peakBytes: m.peakBytes, notes: m.notes,
    };
  } else {
    layer = { ...layer };
  }
  if (m.rowStart === 0) {
    layer.routerNorms = vector(m.routerNorms);
    layer.routerBias = vector(m.routerBias);
    layer.expertNorms = vector(m.expertNorms);
    layer.groupNorms = vector(m.groupNorms);
  }
  const rows = Math.max(0, Math.min(E, m.rowEnd) - m.rowStart);
  for (const [target, values] of [[layer.routerCosine, m.routerCosine], [layer.weightCosine, m.weightCosine]] as const) {
    if (!target || !values || values.length !== rows * E) continue;
    for (let i = 0; i < values.length; i++) target[m.rowStart * E + i] = toNaN(values[i]!);
  }
  out.layers.set(m.layer, layer);
  out.rows.set(m.layer, (out.rows.get(m.layer) ?? 0) + rows);
  return out;
}

/**
 * The answer as messages again, one per layer (whole: a recording's lines have no size limit), to
 * head a recording started after it arrived. Rebuilt from the assembled layers rather than kept,
 * so that a wide model's matrices are held once.
 */
export function expertParamsAsMessages(result: ExpertParamsResult, pid: number): ExpertParamsMessage[] {
  const list = (values: Float64Array | Float32Array | null) => (values ? Array.from(values, (v) => (Number.isFinite(v) ? v : null)) : null);
  return [...result.layers.values()].sort((a, b) => a.layer - b.layer).map((p, part) => ({
    type: 'expert-params', pid, id: result.id, model: result.model, layer: p.layer, part, parts: result.parts,
    experts: p.experts, computeExperts: p.computeExperts, rowStart: 0, rowEnd: p.experts, routerName: p.routerName ?? '',
    routerNorms: list(p.routerNorms), routerCosine: list(p.routerCosine), routerBiasName: p.routerBiasName, routerBias: list(p.routerBias),
    layout: p.layout, groups: p.groups, params: p.params, expertNorms: list(p.expertNorms), groupNorms: list(p.groupNorms),
    weightCosine: list(p.weightCosine), seconds: p.seconds, peakBytes: p.peakBytes, notes: p.notes,
  }));
}

/** Keep one explanation per key (the newest), the most recent last, at most `max`. */
export function addExplanation(list: readonly ExplanationMessage[] | undefined, e: ExplanationMessage, max = 50): ExplanationMessage[] {
  const key = explanationKey(e);
  const kept = (list ?? []).filter((x) => explanationKey(x) !== key);
  kept.push(e);
  return kept.slice(-max);
}
