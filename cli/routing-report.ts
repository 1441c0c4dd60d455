/**
 * What a recording says about a job's routing: per-layer metrics and findings over the whole
 * recording, and the same metrics over time. Computed by replaying the recording through the
 * panel's own Analyzer (panels/engine/analyzer.ts, which runs the src/analysis functions), so
 * the command line, its exports and the panel can never disagree about a number.
 */
import { FINDING_KINDS, parameterFindings, visibilityNotes, type Finding, type ParameterFinding, type Thresholds } from '../src/analysis';
import type { HostMessage, JobUpdate } from '../src/protocol/panel';
import { layerOffsets } from '../src/protocol/probe';
import { Analyzer, type Analysis } from '../panels/engine/analyzer';
import { withPid, type Recording } from '../panels/engine/recording';
import { addExpertParams, type ExpertParamsResult } from '../panels/engine/requests';

export { FINDING_KINDS };

export interface ReportOptions {
  /** Seconds between two points of the series. */
  stepS: number;
  /** Each point summarizes the trailing window of this many seconds (the panel's default is 30). */
  windowS: number;
  thresholds?: Partial<Thresholds>;
}

export const DEFAULT_REPORT_OPTIONS: ReportOptions = { stepS: 1, windowS: 30 };

/** The metrics followed over time, in the order and under the names every export uses. */
export const SERIES_METRICS = [
  { key: 'balancedness', tag: 'balancedness', what: 'mean load / max load over the experts (1 = even)' },
  { key: 'maxVio', tag: 'max_vio', what: '(max load - mean load) / mean load (0 = even)' },
  { key: 'loadEntropy', tag: 'load_entropy', what: 'entropy of the load over experts / ln E (1 = even)' },
  { key: 'routerEntropy', tag: 'router_entropy', what: "mean per-token entropy of the router's softmax / ln E" },
  { key: 'zLoss', tag: 'z_loss', what: 'router z-loss, mean of logsumexp(logits)^2' },
  { key: 'deadExperts', tag: 'dead_experts', what: 'experts that received no token (only once the window is big enough to judge)' },
] as const;

export type SeriesMetric = (typeof SERIES_METRICS)[number]['key'];

/** One layer at one point of the series; null where the metric was not measured or cannot be judged yet. */
export type LayerPoint = Record<SeriesMetric, number | null>;

export interface SeriesPoint {
  /** Seconds since the recording's first counts. */
  t: number;
  /** Probe clock, seconds since the epoch. */
  ts: number;
  /** Passes since attach at this point (a training-step-like axis for TensorBoard and W&B). */
  passes: number;
  /** Passes in the trailing window this point summarizes. */
  windowPasses: number;
  layers: LayerPoint[];
  /**
   * Assignments per expert in the trailing window, per layer (for TensorBoard's histograms).
   * Left out of the JSON report (see reportJson) to keep it small for models with many experts.
   */
  expertLoad: number[][];
}

export interface LayerReport extends LayerPoint {
  layer: number;
  /** The layer's module path when the probe reported one. */
  name: string;
  /** How the panel names the layer: module path and the model's own layer number ("model.layers.2.mlp (layer 2)"). */
  label: string;
  experts: number;
  topK: number;
  /** Tokens through the layer over the whole recording. */
  tokens: number;
  cv: number | null;
  gini: number | null;
  effectiveExperts: number | null;
  /** Dead experts by index (empty when none); null when the recording is too short to judge. */
  deadExpertIds: number[] | null;
  nanLogits: number;
  infLogits: number;
  droppedTokens: number;
  /** Mean milliseconds inside the MoE block per pass. */
  msPerPass: number | null;
  /** Assignments per expert over the whole recording. */
  counts: number[];
}

export interface RoutingReport {
  pid: number;
  /** When recording started, ms since the epoch. */
  started: number;
  job: { argv: string[]; python: string; framework: string; frameworkVersion: string; method: string } | null;
  model: { id: number; class: string; layers: number };
  /**
   * What the whole-recording numbers cover: the counts since attach (pass 0) up to the last
   * snapshot; `seconds` is the time between the recording's first and last counts.
   */
  window: { passes: number; seconds: number; tokens: number; fromPass: number; toPass: number };
  thresholds: Thresholds;
  layers: LayerReport[];
  findings: Finding[];
  /** Findings from the experts' weights, when the recording holds the probe's expert-weight analysis. */
  parameterFindings?: ParameterFinding[];
  /** Routing decisions the probe explained during (or before) the recording. */
  explanations?: number;
  series: { stepS: number; windowS: number; points: SeriesPoint[] };
  /** What the probe saw of how the passes ran (torch.compile, CUDA graphs), as of the last counts; empty for plain eager passes. */
  visibility: string[];
}

const finite = (x: number): number | null => (Number.isFinite(x) ? x : null);

/**
 * The counts of layer `l` in an analysis' window. The one place that knows how the window
 * lays out layers, so per-layer expert counts need a change here only.
 */
export function layerCounts(a: Analysis, l: number): Float64Array {
  return a.window.counts.subarray(a.offsets[l]!, a.offsets[l]! + a.widths[l]!);
}

/** The cumulative counts of layer `l` in a host update (same single place as layerCounts). */
export function updateLayerCounts(u: JobUpdate, l: number): number[] {
  const start = layerOffsets(u.widths)[l]!;
  return u.counts.slice(start, start + u.widths[l]!);
}

/** Dead experts of layer `l` as `findings` judged them; null when the window was too small to judge. */
function deadExpertIds(a: Analysis, l: number): number[] | null {
  if (!(a.rows[l]!.tokens >= a.judgeable[l]!)) return null;
  return a.findings.find((f) => f.kind === 'dead_expert' && f.layer === l)?.experts ?? [];
}

function layerPoint(a: Analysis, l: number): LayerPoint {
  const r = a.rows[l]!;
  const dead = deadExpertIds(a, l);
  return {
    balancedness: finite(r.balancedness), maxVio: finite(r.maxVio), loadEntropy: finite(r.normalizedEntropy),
    routerEntropy: finite(r.routerEntropy), zLoss: finite(r.zLoss), deadExperts: dead === null ? null : dead.length,
  };
}

/** Build the report; throws when the recording holds no counts (parseRecording already refuses such files). */
export function buildReport(recording: Recording, options: Partial<ReportOptions> = {}): RoutingReport {
  const opts = { ...DEFAULT_REPORT_OPTIONS, ...options };
  if (!(opts.stepS > 0) || !(opts.windowS > 0)) throw new RangeError('step and window must be positive numbers of seconds');
  const pid = recording.header.pid;
  const messages: HostMessage[] = withPid(recording.messages, pid);
  const attached = messages.find((m): m is Extract<HostMessage, { type: 'attached' }> => m.type === 'attached');
  const updates = messages.filter((m): m is JobUpdate => m.type === 'update');
  if (!updates.length) throw new Error('The recording holds no routing counts.');
  // The Analyzer follows one model per job: the first one it sees.
  const modelId = updates[0]!.model;
  const last = [...updates].reverse().find((u) => u.model === modelId)!;

  // The series: the panel's trailing-window analysis, as it stood at each step.
  const replay = new Analyzer();
  const points: SeriesPoint[] = [];
  const t0 = updates[0]!.ts;
  let nextStep = t0;
  let lastPasses = -1;
  const addPoint = (u: JobUpdate) => {
    const a = replay.analyze(pid, { windowMode: 'seconds', windowValue: opts.windowS, thresholds: opts.thresholds ?? {} });
    if (!a || a.passes === lastPasses) return;
    lastPasses = a.passes;
    points.push({
      t: u.ts - t0, ts: u.ts, passes: a.passes, windowPasses: a.window.passes,
      layers: a.rows.map((_, l) => layerPoint(a, l)), expertLoad: a.rows.map((_, l) => Array.from(layerCounts(a, l))),
    });
  };
  for (const m of messages) {
    if (m.type === 'tokens') continue; // per-token records do not enter these metrics
    replay.ingest(m);
    if (m.type === 'update' && m.model === modelId && m.ts >= nextStep) {
      addPoint(m);
      while (nextStep <= m.ts) nextStep += opts.stepS;
    }
  }
  if (lastPasses !== last.passes) addPoint(last);

  // The whole recording: everything since attach, as the panel's "all" window shows it. Fed only
  // the newest counts, so that no history limit can shorten the window of a long recording.
  const whole = new Analyzer();
  if (attached) whole.ingest(attached);
  // how the probe last described the layers (the first calls may have told it more than the attach did)
  const described = messages.filter((m) => m.type === 'layers' && m.model === modelId).at(-1);
  if (described) whole.ingest(described);
  whole.ingest(last);
  const a = whole.analyze(pid, { windowMode: 'all', thresholds: opts.thresholds ?? {} })!;
  const info = attached?.models.find((m) => m.id === modelId);
  const layers: LayerReport[] = a.rows.map((r, l) => ({
    layer: l,
    name: r.info.name,
    label: r.label,
    experts: r.experts,
    topK: r.topK,
    tokens: r.tokens,
    ...layerPoint(a, l),
    cv: finite(r.cv),
    gini: finite(r.gini),
    effectiveExperts: finite(r.effectiveExperts),
    deadExpertIds: deadExpertIds(a, l),
    nanLogits: r.nan,
    infLogits: r.inf,
    droppedTokens: r.droppedTokens,
    msPerPass: finite(r.msPerPass),
    counts: Array.from(layerCounts(a, l)),
  }));
  // What the probe answered on request: the latest expert-weight analysis, and explanations.
  let weights: ExpertParamsResult | undefined;
  for (const m of messages) if (m.type === 'expert-params' && m.model === modelId) weights = addExpertParams(weights, m);
  const explained = messages.filter((m) => m.type === 'explanation' && m.model === modelId).length;
  return {
    pid,
    started: recording.header.started,
    job: attached
      ? { argv: attached.argv, python: attached.python, framework: attached.framework, frameworkVersion: attached.frameworkVersion, method: attached.method }
      : null,
    model: { id: modelId, class: info?.class ?? 'unknown', layers: a.layers },
    window: { passes: a.window.passes, seconds: last.ts - t0, tokens: a.window.tokens, fromPass: a.window.fromPass, toPass: a.window.toPass },
    thresholds: a.thresholds,
    layers,
    findings: a.findings,
    ...(weights ? { parameterFindings: parameterFindings([...weights.layers.values()], (l) => a.rows[l]?.label ?? `layer ${l}`) } : {}),
    ...(explained ? { explanations: explained } : {}),
    series: { stepS: opts.stepS, windowS: opts.windowS, points },
    visibility: visibilityNotes(last).map((n) => n.text),
  };
}
