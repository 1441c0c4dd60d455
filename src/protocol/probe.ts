/**
 * Frames the probe (inside the job) sends to the host over its Unix socket.
 * Each frame is a 4-byte little-endian length followed by one MessagePack map.
 *
 * The Python probe is held to these shapes by test/vectors/probe-frames.json:
 * the TypeScript unit tests check every vector against parseProbeFrame, and the
 * Python tests check that the probe encodes the same values to the same bytes
 * and that the frames it really emits match the vectors' keys and types.
 *
 * Framework-neutral on purpose: nothing here is specific to torch, so probes
 * for JAX, TensorFlow or ONNX Runtime speak the same frames.
 */

export const PROBE_PROTOCOL_VERSION = 2;
export const MAX_PROBE_FRAME_BYTES = 16 * 1024 * 1024;

/** 'attention': a mixture-of-attention layer (routed query/output projections, JetMoE); else an MoE MLP. */
export const LAYER_KINDS = ['mlp', 'attention'] as const;
export type LayerKind = (typeof LAYER_KINDS)[number];

/**
 * How a layer chooses experts:
 * - top-k: each token picks top_k experts;
 * - variable-k: each token picks as many as a threshold or top-p lets through (top_k = the most possible);
 * - expert-choice: each expert picks its tokens (equal loads by design; a token may get none);
 * - soft: every token is a weighted mix of all experts (counts: each token's largest-weight expert);
 * - hash: experts looked up from the token id in a fixed table (the router only weights them);
 * - fixed: the expert is given from outside the model (e.g. a dataset index per sample).
 */
export const ROUTING_DESIGNS = ['top-k', 'variable-k', 'expert-choice', 'soft', 'hash', 'fixed'] as const;
export type RoutingDesign = (typeof ROUTING_DESIGNS)[number];

/**
 * Where the counts come from:
 * - dispatched: what the block handed its experts (the ids they received);
 * - expert-inputs: the rows each separately called expert received (exact loads, no per-token ids);
 * - router: the ids in the router's (or routing function's) output;
 * - recomputed: top-k of the router's logits, recomputed by the probe (nothing else shows the choice).
 */
export const ROUTING_SOURCES = ['dispatched', 'expert-inputs', 'router', 'recomputed'] as const;
export type RoutingSource = (typeof ROUTING_SOURCES)[number];
/** Where per-token ids (token records) come from; 'none' when the layer shows no per-token choices. */
export const TOKEN_SOURCES = [...ROUTING_SOURCES, 'none'] as const;
export type TokenSource = (typeof TOKEN_SOURCES)[number];

export interface LayerInfo {
  /** Position among the model's MoE layers: the probe's id for the layer in every frame. */
  index: number;
  /** Module path inside the model, e.g. "model.layers.2.mlp". */
  name: string;
  /** How the probe found it: moe-block, router, embedding-experts. */
  arch: string;
  /** Width of this layer: the experts its router chooses among (identity experts included). */
  experts: number;
  /** Experts per token (top-k); for other designs the most one token can get. */
  top_k: number;
  /** The model's own layer number (the outermost number in the path), -1 when the path has none. */
  model_index: number;
  /** The stack holding the layer, e.g. "model.layers", "encoder.block", "decoder.block"; "" when none. */
  stack: string;
  kind: LayerKind;
  design: RoutingDesign;
  source: RoutingSource;
  token_source: TokenSource;
  /** Zero-compute (identity/skip) experts: the last identity_experts of the layer's experts. */
  identity_experts: number;
  /** Always-on shared experts beside the routed ones (not counted: every token goes there). */
  shared_experts: number;
  /** The router's scoring function when the model says ("sigmoid", "softmax"); "" when unknown. */
  gating: string;
  /**
   * Expert-parallel layers only: the global ids of the experts this process holds, in the order of
   * its local experts (from the model, or moe_probe.attach(model, expert_map=...)). `experts` is then
   * the layer's global width, and counts are the rows this process's experts received, at their
   * global ids, so the counts of the job's logical layer are the sum over its ranks.
   */
  held?: number[];
}

/** Where the probe's process sits in a distributed job (hello.dist; absent for a single process). */
export interface DistInfo {
  rank: number;
  world_size: number;
  /** -1 when the launcher did not say. */
  local_rank: number;
  /** The host name of the machine. */
  node: string;
  /** torchelastic's run id (TORCHELASTIC_RUN_ID), "" when none. */
  run_id: string;
  /** The rendezvous address "MASTER_ADDR:MASTER_PORT", "" when not set. */
  master: string;
  /** torch.distributed's backend ("gloo", "nccl", ...), "" when it is not initialized. */
  backend: string;
  /** Where rank and world size were read: the initialized process group, or the launcher's environment. */
  source: 'torch.distributed' | 'environment';
}

export interface ModelInfo {
  id: number;
  class: string;
  model_type: string;
  device: string;
  dtype: string;
  layers: LayerInfo[];
}

export interface ProbeErrorInfo {
  code: string;
  message: string;
}

export interface ProbeHello {
  t: 'hello';
  v: number;
  pid: number;
  mode: 'injected' | 'library';
  framework: string;
  framework_version: string;
  python: string;
  argv: string[];
  models: ModelInfo[];
  /** The probe's sampling settings (flush interval, token sample size and budgets). */
  settings?: Record<string, number>;
  /** What the probe can see only partly: CUDA graph replays, compiled modules, ... */
  warnings?: ProbeErrorInfo[];
  error?: ProbeErrorInfo;
  /** Present when the process is one rank of a distributed job. */
  dist?: DistInfo;
}

/** Columns of a counts frame's per-layer `health` block, in order. */
export const HEALTH_COLUMNS = ['logit_tokens', 'entropy_sum', 'zloss_sum', 'nan', 'inf', 'dropped'] as const;

/**
 * How the passes counted so far ran, and what the probe could not see; cumulative since attach.
 * Forward hooks run only where Python runs: in torch.compile'd code the probe's hooks are
 * compiled in as calls of its own op (one recompilation at the first attach), and a pass
 * replayed from a CUDA graph captured before attach runs no Python at all.
 */
export interface ProbeVisibility {
  /** Passes read (wholly or in part) from torch.compile'd code, through the probe's compiled-in hooks. */
  compiled_passes: number;
  /** Compilations that put the probe's hooks into compiled code (a compiled model: one at the first attach, none after). */
  tap_compiles: number;
  /** Seconds those compilations took; the job's pass waited for them. */
  tap_compile_s: number;
  /** The job's other compilations while attached (new shapes, its own code). */
  other_compiles: number;
  /** Graph breaks dynamo reported while attached. */
  graph_breaks: number;
  /** Passes recorded into CUDA graphs captured while attached (their counting runs at each replay). */
  captured_passes: number;
  /** Passes counted from replays of those graphs. */
  replayed_passes: number;
  /** Replays of CUDA graphs captured before attach (or holding no pass the probe saw): passes it could not see, not counted. */
  unseen_replays: number;
}

export const VISIBILITY_FIELDS = ['compiled_passes', 'tap_compiles', 'tap_compile_s', 'other_compiles', 'graph_breaks',
  'captured_passes', 'replayed_passes', 'unseen_replays'] as const satisfies ReadonlyArray<keyof ProbeVisibility>;

/** Cumulative per-(layer, expert) token counts since attach, as of the end of pass `passes`. */
export interface ProbeCounts {
  t: 'counts';
  model: number;
  seq: number;
  ts: number;
  passes: number;
  layers: number;
  /** Experts of each layer (layers may differ): layer l's counts start at the sum of the widths before it. */
  widths: number[];
  /** int64 little-endian, sum(widths) values: layer 0's experts, then layer 1's, ... */
  counts: Uint8Array;
  /** int64 little-endian [layers]: tokens routed through each layer, cumulative. */
  tokens: Uint8Array;
  /** Snapshots the probe dropped because its queue was full (cumulative). */
  dropped: number;
  /**
   * Router health, float64 little-endian [layers x HEALTH_COLUMNS], cumulative: tokens whose
   * logits were measured, sums of softmax entropy (nats) and of logsumexp^2, NaN and Inf
   * logit counts, assignments dropped by expert capacity (tokens for top-1 layers; for layers read
   * from the rows each expert received, token-expert assignments no expert served; for expert
   * choice, tokens no expert took). Entropy is of the softmax of the logits, or of the row itself
   * when the router hands out probabilities. Absent when the probe measures none.
   */
  health?: Uint8Array;
  /** Largest finite router logit seen per layer, float64 little-endian [layers]. */
  max_logit?: Uint8Array;
  /** Seconds spent inside each MoE block, cumulative. */
  time_s?: number[];
  /** Seconds the probe itself spent in its hooks, cumulative. */
  probe_s?: number;
  /**
   * Seconds inside this process's own experts per layer, cumulative: sent when some layer is
   * expert parallel (0 for the others). Its compute, without the all-to-all waits `time_s` includes.
   */
  expert_s?: number[];
  /** Passes seen as prefill (sequence length > 1) and as decode (length 1), cumulative. */
  prefill?: number;
  decode?: number;
  /** Shape of the last pass's input ids, e.g. [batch, seq]. */
  shape?: number[];
  /** Token records the probe dropped because its queue was full (cumulative). */
  dropped_tokens?: number;
  /** How the passes ran: compiled, captured into CUDA graphs, replayed unseen. */
  visibility?: ProbeVisibility;
}

/** Per-token routing of one sampled pass. */
export interface ProbeTokenLayer {
  layer: number;
  n: number;
  k: number;
  /** int32 little-endian [n x k] expert ids. */
  ids: Uint8Array;
  /** float32 little-endian [n x k] mixing weights, when the router exposes them. */
  weights: Uint8Array | null;
}

export interface ProbeTokens {
  t: 'tokens';
  model: number;
  pass: number;
  phase: 'prefill' | 'decode';
  n: number;
  k: number;
  /** int32 little-endian [n] input token ids (the first n of the flattened batch), when seen. */
  token_ids: Uint8Array | null;
  /** The tokenizer's string for each token id, when a tokenizer is alive in the job. */
  texts: string[] | null;
  layers: ProbeTokenLayer[];
}

export interface ProbeFailure {
  t: 'error';
  code: string;
  message: string;
  detail?: string;
}

export interface ProbeBye {
  t: 'bye';
  reason: string;
}

/** A model's layers again, when the first calls showed more than structure did (how ids are read, the design). */
export interface ProbeLayers {
  t: 'layers';
  model: number;
  layers: LayerInfo[];
}

/**
 * Why a sampled token's router chose an expert: the attribution of layer `layer`'s router score
 * for `expert` at the token (and of its routing probability) to each position's input embedding,
 * computed by the probe on a thread of its own from the sequence the token saw (its row of the
 * batch; for a generated token, the prompt and every token generated since).
 * Per-position arrays are float64 little-endian [n].
 */
export interface ProbeExplanation {
  t: 'explanation';
  /** The request's id. */
  id: number;
  model: number;
  pass: number;
  /** The token's index among the pass's sampled tokens. */
  index: number;
  layer: number;
  expert: number;
  /** Row of the batch the token sat in, and its position in the sequence below. */
  row: number;
  position: number;
  /** int32 little-endian [n]: the sequence that was recomputed. */
  token_ids: Uint8Array;
  texts: string[] | null;
  steps: number;
  /** 'zero', 'mean' (the mean input embedding over the vocabulary) or 'token' (baseline_token's embedding at every position). */
  baseline: string;
  /** The baseline's token id; -1 unless baseline is 'token'. */
  baseline_token: number;
  /** How the probability is made from the scores: 'softmax', 'sigmoid' or 'row' (the router hands out probabilities). */
  prob_kind: string;
  /** f(x): the router's score for the expert at the token, and its routing probability. */
  logit: number;
  prob: number;
  /** f(baseline). */
  baseline_logit: number;
  baseline_prob: number;
  /** Gradient x input per position (summed over the hidden dimension), for the score and the probability. */
  gxi_logit: Uint8Array;
  gxi_prob: Uint8Array;
  /** Integrated gradients per position (midpoint rule over `steps` points); they should sum to f(x) - f(baseline). */
  ig_logit: Uint8Array;
  ig_prob: Uint8Array;
  /** int32 little-endian [k]: the top-k experts of the recomputed scores at the token. */
  recomputed: Uint8Array;
  /** Seconds the explanation took, and the most bytes it held for gradients at once. */
  seconds: number;
  peak_bytes: number;
  /** Integrated-gradient steps run together in one batch (as many as the memory limit allowed). */
  batch: number;
  /** Where it ran, e.g. "cpu", "cuda:0". */
  device: string;
  /** What the reader should know (a recomputed KV cache, a prompt cut short, ...). */
  notes: string[];
}

/**
 * What one MoE layer's experts look like, one frame per layer of an expert-params request.
 * Vectors are float64 little-endian [experts]; matrices float32 little-endian [experts x experts],
 * row-major; NaN where a value does not exist (a zero-compute expert, a zero-norm row).
 */
export interface ProbeExpertParams {
  t: 'expert-params';
  id: number;
  model: number;
  layer: number;
  /** This frame's place among the request's frames (one per layer asked for). */
  part: number;
  parts: number;
  experts: number;
  /** Experts with weights of their own (the others are zero-compute). */
  compute_experts: number;
  /** The router weight's name inside the router module ("" when none was found). */
  router_name: string;
  /** Norm of each expert's router row. */
  router_norms: Uint8Array | null;
  /** Cosine similarity of every pair of router rows. */
  router_cosine: Uint8Array | null;
  router_bias_name: string;
  /** A per-expert router bias (a Linear bias, a selection bias such as e_score_correction_bias). */
  router_bias: Uint8Array | null;
  /** How the experts' weights are held: 'modules', 'stacked', 'embedding-rows', or '' when not found. */
  layout: string;
  /** Each expert's parameters, by name (the groups of group_norms). */
  groups: string[];
  /** Weights per expert read, in all. */
  params: number;
  /** Norm of all of each expert's weights. */
  expert_norms: Uint8Array | null;
  /** float64 [groups x experts]: the norm of each parameter group of each expert. */
  group_norms: Uint8Array | null;
  /** Cosine similarity of every pair of experts' flattened weights. */
  weight_cosine: Uint8Array | null;
  seconds: number;
  /** Most bytes held at once while reading the weights. */
  peak_bytes: number;
  notes: string[];
}

/** A request the probe cannot answer: what was asked, why not (`code` for programs), in words. */
export interface ProbeRefused {
  t: 'refused';
  id: number;
  request: 'explain' | 'expert-params' | 'unknown';
  /**
   * bad_request, busy, no_context (the pass's input is not kept), training_mode, compiled, no_router, no_embedding,
   * no_scores, not_differentiable, decoder_layer, over_limit (time or memory), model_error, cancelled, failed; and from the
   * host, distributed_job (asked of a distributed job shown as one).
   */
  code: string;
  message: string;
}

export type ProbeFrame = ProbeHello | ProbeCounts | ProbeTokens | ProbeFailure | ProbeBye | ProbeLayers | ProbeExplanation | ProbeExpertParams | ProbeRefused;

/** Baselines an explanation can start its path from. */
export const EXPLAIN_BASELINES = ['zero', 'mean', 'token'] as const;
export type ExplainBaseline = (typeof EXPLAIN_BASELINES)[number];

/**
 * Frames the host sends to the probe, on the same socket and framing. A TCP client must send
 * auth first. The probe answers explain and expert-params on a thread of its own, one at a time
 * (explanation or refused; expert-params frames then), and detach with its last counts and bye.
 */
export type HostToProbe =
  | { t: 'auth'; token: string }
  | { t: 'detach' }
  /** Explain a sampled token's routing (see ProbeExplanation); the limits bound the work (default 60 s, 512 MiB). */
  | { t: 'explain'; id: number; model: number; pass: number; index: number; layer: number; expert: number; steps: number; baseline: ExplainBaseline; baseline_token?: number; max_seconds?: number; max_mb?: number }
  /** Analyse the experts' weights of the listed layers (all when absent), reading chunk_mb at a time (default 64). */
  | { t: 'expert-params'; id: number; model: number; layers?: number[]; chunk_mb?: number };

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

type Obj = Record<string, unknown>;

/** A decoded value for an error message: short, and never throws (BigInt, cycles, deep nesting). */
export function describeValue(value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    return typeof value;
  }
  if (text === undefined) return String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function isObj(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

function field<T>(obj: Obj, key: string, check: (v: unknown) => v is T, what: string): T {
  const value = obj[key];
  if (!check(value)) throw new ProtocolError(`field "${key}" should be ${what}`);
  return value;
}

const isStr = (v: unknown): v is string => typeof v === 'string';
const isNat = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isStrArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);
const isNumArray = (v: unknown): v is number[] => Array.isArray(v) && v.every(isNum);
const isNatArray = (v: unknown): v is number[] => Array.isArray(v) && v.every(isNat);
const oneOf = <T extends string>(values: readonly T[]) => (v: unknown): v is T => typeof v === 'string' && (values as readonly string[]).includes(v);

function optional<T>(obj: Obj, key: string, check: (v: unknown) => v is T, what: string): T | undefined {
  return obj[key] === undefined || obj[key] === null ? undefined : field(obj, key, check, what);
}

function sizedBytes(obj: Obj, key: string, bytes: number): Uint8Array | undefined {
  const value = optional(obj, key, isBytes, 'binary data');
  if (value !== undefined && value.byteLength !== bytes) {
    throw new ProtocolError(`field "${key}" holds ${value.byteLength} bytes, expected ${bytes}`);
  }
  return value;
}

function parseTokenLayer(value: unknown): ProbeTokenLayer {
  if (!isObj(value)) throw new ProtocolError('token layer should be a map');
  const n = field(value, 'n', isNat, 'a whole number');
  const k = field(value, 'k', isNat, 'a whole number');
  const ids = sizedBytes(value, 'ids', n * k * 4);
  if (!ids) throw new ProtocolError('field "ids" should be binary data');
  return {
    layer: field(value, 'layer', isNat, 'a whole number'),
    n,
    k,
    ids,
    weights: sizedBytes(value, 'weights', n * k * 4) ?? null,
  };
}

function parseLayer(value: unknown): LayerInfo {
  if (!isObj(value)) throw new ProtocolError('layer should be a map');
  const experts = field(value, 'experts', isNat, 'a whole number');
  const topK = field(value, 'top_k', isNat, 'a whole number');
  if (experts < 1 || topK < 1 || topK > experts) throw new ProtocolError(`layer has ${experts} experts and top_k ${topK}`);
  const identity = field(value, 'identity_experts', isNat, 'a whole number');
  if (identity >= experts) throw new ProtocolError(`layer has ${experts} experts, ${identity} of them zero-compute`);
  const held = optional(value, 'held', isNatArray, 'a list of whole numbers');
  if (held && (!held.length || held.some((e) => e >= experts) || new Set(held).size !== held.length)) {
    throw new ProtocolError(`field "held" should name distinct experts below ${experts}, got ${describeValue(held)}`);
  }
  const info: LayerInfo = {
    index: field(value, 'index', isNat, 'a whole number'),
    name: field(value, 'name', isStr, 'a string'),
    arch: field(value, 'arch', isStr, 'a string'),
    experts,
    top_k: topK,
    model_index: field(value, 'model_index', isInt, 'a whole number (-1 when none)'),
    stack: field(value, 'stack', isStr, 'a string'),
    kind: field(value, 'kind', oneOf(LAYER_KINDS), `one of ${LAYER_KINDS.join(', ')}`),
    design: field(value, 'design', oneOf(ROUTING_DESIGNS), `one of ${ROUTING_DESIGNS.join(', ')}`),
    source: field(value, 'source', oneOf(ROUTING_SOURCES), `one of ${ROUTING_SOURCES.join(', ')}`),
    token_source: field(value, 'token_source', oneOf(TOKEN_SOURCES), `one of ${TOKEN_SOURCES.join(', ')}`),
    identity_experts: identity,
    shared_experts: field(value, 'shared_experts', isNat, 'a whole number'),
    gating: field(value, 'gating', isStr, 'a string'),
  };
  if (held) info.held = held;
  return info;
}

function parseDist(value: unknown): DistInfo {
  if (!isObj(value)) throw new ProtocolError('field "dist" should be a map');
  const worldSize = field(value, 'world_size', isNat, 'a whole number');
  const rank = field(value, 'rank', isNat, 'a whole number');
  if (rank >= worldSize) throw new ProtocolError(`rank ${rank} is not below the world size ${worldSize}`);
  const source = value.source;
  if (source !== 'torch.distributed' && source !== 'environment') throw new ProtocolError('field "source" should be "torch.distributed" or "environment"');
  return {
    rank, world_size: worldSize,
    local_rank: field(value, 'local_rank', isInt, 'a whole number (-1 when unknown)'),
    node: field(value, 'node', isStr, 'a string'),
    run_id: field(value, 'run_id', isStr, 'a string'),
    master: field(value, 'master', isStr, 'a string'),
    backend: field(value, 'backend', isStr, 'a string'),
    source,
  };
}

function parseLayers(value: unknown): LayerInfo[] {
  if (!Array.isArray(value)) throw new ProtocolError('field "layers" should be a list');
  const layers = value.map(parseLayer);
  layers.forEach((l, i) => {
    if (l.index !== i) throw new ProtocolError(`layer ${i} says it is layer ${l.index}`);
  });
  return layers;
}

function parseVisibility(value: unknown): ProbeVisibility {
  if (!isObj(value)) throw new ProtocolError('field "visibility" should be a map');
  const out = {} as ProbeVisibility;
  for (const key of VISIBILITY_FIELDS) {
    out[key] = key === 'tap_compile_s'
      ? field(value, key, (v): v is number => isNum(v) && v >= 0, 'a number of seconds')
      : field(value, key, isNat, 'a whole number');
  }
  return out;
}

function parseModel(value: unknown): ModelInfo {
  if (!isObj(value)) throw new ProtocolError('model should be a map');
  return {
    id: field(value, 'id', isNat, 'a whole number'),
    class: field(value, 'class', isStr, 'a string'),
    model_type: field(value, 'model_type', isStr, 'a string'),
    device: field(value, 'device', isStr, 'a string'),
    dtype: field(value, 'dtype', isStr, 'a string'),
    layers: parseLayers(value.layers),
  };
}

/** Validate one decoded frame; throws ProtocolError saying what is wrong. */
export function parseProbeFrame(value: unknown): ProbeFrame {
  if (!isObj(value)) throw new ProtocolError('frame should be a MessagePack map');
  const t = value.t;
  switch (t) {
    case 'hello': {
      const v = field(value, 'v', isNat, 'a whole number');
      if (v !== PROBE_PROTOCOL_VERSION) {
        throw new ProtocolError(`probe speaks protocol version ${v}, this host speaks ${PROBE_PROTOCOL_VERSION}`);
      }
      const mode = value.mode;
      if (mode !== 'injected' && mode !== 'library') throw new ProtocolError('field "mode" should be "injected" or "library"');
      const models = value.models;
      if (!Array.isArray(models)) throw new ProtocolError('field "models" should be a list');
      const hello: ProbeHello = {
        t,
        v,
        pid: field(value, 'pid', isNat, 'a whole number'),
        mode,
        framework: field(value, 'framework', isStr, 'a string'),
        framework_version: field(value, 'framework_version', isStr, 'a string'),
        python: field(value, 'python', isStr, 'a string'),
        argv: field(value, 'argv', isStrArray, 'a list of strings'),
        models: models.map(parseModel),
      };
      if (value.error !== undefined) {
        if (!isObj(value.error)) throw new ProtocolError('field "error" should be a map');
        hello.error = {
          code: field(value.error, 'code', isStr, 'a string'),
          message: field(value.error, 'message', isStr, 'a string'),
        };
      }
      if (value.warnings !== undefined) {
        if (!Array.isArray(value.warnings)) throw new ProtocolError('field "warnings" should be a list');
        hello.warnings = value.warnings.map((w) => {
          if (!isObj(w)) throw new ProtocolError('a warning should be a map');
          return { code: field(w, 'code', isStr, 'a string'), message: field(w, 'message', isStr, 'a string') };
        });
      }
      if (value.dist !== undefined && value.dist !== null) hello.dist = parseDist(value.dist);
      const settings = value.settings;
      if (settings !== undefined) {
        if (!isObj(settings) || !Object.values(settings).every(isNum)) throw new ProtocolError('field "settings" should map names to numbers');
        hello.settings = settings as Record<string, number>;
      }
      return hello;
    }
    case 'counts': {
      const layers = field(value, 'layers', isNat, 'a whole number');
      const widths = field(value, 'widths', isNatArray, 'a list of whole numbers');
      if (widths.length !== layers) throw new ProtocolError(`field "widths" has ${widths.length} values for ${layers} layers`);
      if (widths.some((w) => w < 1)) throw new ProtocolError('field "widths": every layer has at least one expert');
      const total = widths.reduce((a, b) => a + b, 0);
      const counts = field(value, 'counts', isBytes, 'binary data');
      if (counts.byteLength !== total * 8) {
        throw new ProtocolError(`counts holds ${counts.byteLength} bytes, expected ${total} int64 values (the sum of the widths)`);
      }
      const tokens = sizedBytes(value, 'tokens', layers * 8);
      if (!tokens) throw new ProtocolError('field "tokens" should be binary data');
      const frame: ProbeCounts = {
        t,
        model: field(value, 'model', isNat, 'a whole number'),
        seq: field(value, 'seq', isNat, 'a whole number'),
        ts: field(value, 'ts', isNum, 'a number'),
        passes: field(value, 'passes', isNat, 'a whole number'),
        layers,
        widths,
        counts,
        tokens,
        dropped: field(value, 'dropped', isNat, 'a whole number'),
      };
      const health = sizedBytes(value, 'health', layers * HEALTH_COLUMNS.length * 8);
      if (health) frame.health = health;
      const maxLogit = sizedBytes(value, 'max_logit', layers * 8);
      if (maxLogit) frame.max_logit = maxLogit;
      for (const key of ['time_s', 'expert_s'] as const) {
        const seconds = optional(value, key, isNumArray, 'a list of numbers');
        if (!seconds) continue;
        if (seconds.length !== layers) throw new ProtocolError(`field "${key}" has ${seconds.length} values for ${layers} layers`);
        frame[key] = seconds;
      }
      for (const key of ['prefill', 'decode', 'dropped_tokens'] as const) {
        const n = optional(value, key, isNat, 'a whole number');
        if (n !== undefined) frame[key] = n;
      }
      const probeS = optional(value, 'probe_s', isNum, 'a number');
      if (probeS !== undefined) frame.probe_s = probeS;
      const shape = optional(value, 'shape', isNumArray, 'a list of numbers');
      if (shape) frame.shape = shape;
      if (value.visibility !== undefined && value.visibility !== null) frame.visibility = parseVisibility(value.visibility);
      return frame;
    }
    case 'tokens': {
      const phase = value.phase;
      if (phase !== 'prefill' && phase !== 'decode') throw new ProtocolError('field "phase" should be "prefill" or "decode"');
      const n = field(value, 'n', isNat, 'a whole number');
      const layersValue = value.layers;
      if (!Array.isArray(layersValue)) throw new ProtocolError('field "layers" should be a list');
      const texts = optional(value, 'texts', isStrArray, 'a list of strings');
      return {
        t,
        model: field(value, 'model', isNat, 'a whole number'),
        pass: field(value, 'pass', isNat, 'a whole number'),
        phase,
        n,
        k: field(value, 'k', isNat, 'a whole number'),
        token_ids: optional(value, 'token_ids', isBytes, 'binary data') ?? null,
        texts: texts ?? null,
        layers: layersValue.map(parseTokenLayer),
      };
    }
    case 'error': {
      const failure: ProbeFailure = {
        t,
        code: field(value, 'code', isStr, 'a string'),
        message: field(value, 'message', isStr, 'a string'),
      };
      if (isStr(value.detail)) failure.detail = value.detail;
      return failure;
    }
    case 'bye':
      return { t, reason: field(value, 'reason', isStr, 'a string') };
    case 'layers':
      return { t, model: field(value, 'model', isNat, 'a whole number'), layers: parseLayers(value.layers) };
    case 'explanation':
      return parseExplanation(value);
    case 'expert-params':
      return parseExpertParams(value);
    case 'refused': {
      const request = value.request;
      if (request !== 'explain' && request !== 'expert-params' && request !== 'unknown') {
        throw new ProtocolError('field "request" should be "explain", "expert-params" or "unknown"');
      }
      return {
        t, id: field(value, 'id', isNat, 'a whole number'), request,
        code: field(value, 'code', isStr, 'a string'), message: field(value, 'message', isStr, 'a string'),
      };
    }
    default:
      throw new ProtocolError(`unknown frame type ${describeValue(t)}`);
  }
}

function parseExplanation(value: Obj): ProbeExplanation {
  const tokenIds = field(value, 'token_ids', isBytes, 'binary data');
  if (tokenIds.byteLength % 4) throw new ProtocolError('field "token_ids" should hold int32 values');
  const n = tokenIds.byteLength / 4;
  const perPosition = (key: string) => {
    const bytes = sizedBytes(value, key, n * 8);
    if (!bytes) throw new ProtocolError(`field "${key}" should be binary data`);
    return bytes;
  };
  const position = field(value, 'position', isNat, 'a whole number');
  if (position >= n) throw new ProtocolError(`position ${position} is outside the ${n}-token sequence`);
  const texts = optional(value, 'texts', isStrArray, 'a list of strings');
  if (texts && texts.length !== n) throw new ProtocolError(`field "texts" has ${texts.length} strings for ${n} tokens`);
  const recomputed = field(value, 'recomputed', isBytes, 'binary data');
  if (recomputed.byteLength % 4) throw new ProtocolError('field "recomputed" should hold int32 values');
  return {
    t: 'explanation',
    id: field(value, 'id', isNat, 'a whole number'),
    model: field(value, 'model', isNat, 'a whole number'),
    pass: field(value, 'pass', isNat, 'a whole number'),
    index: field(value, 'index', isNat, 'a whole number'),
    layer: field(value, 'layer', isNat, 'a whole number'),
    expert: field(value, 'expert', isNat, 'a whole number'),
    row: field(value, 'row', isNat, 'a whole number'),
    position,
    token_ids: tokenIds,
    texts: texts ?? null,
    steps: field(value, 'steps', isNat, 'a whole number'),
    baseline: field(value, 'baseline', isStr, 'a string'),
    baseline_token: field(value, 'baseline_token', isInt, 'a whole number (-1 when none)'),
    prob_kind: field(value, 'prob_kind', isStr, 'a string'),
    logit: field(value, 'logit', isNum, 'a number'),
    prob: field(value, 'prob', isNum, 'a number'),
    baseline_logit: field(value, 'baseline_logit', isNum, 'a number'),
    baseline_prob: field(value, 'baseline_prob', isNum, 'a number'),
    gxi_logit: perPosition('gxi_logit'),
    gxi_prob: perPosition('gxi_prob'),
    ig_logit: perPosition('ig_logit'),
    ig_prob: perPosition('ig_prob'),
    recomputed,
    seconds: field(value, 'seconds', isNum, 'a number'),
    peak_bytes: field(value, 'peak_bytes', isNat, 'a whole number'),
    batch: field(value, 'batch', isNat, 'a whole number'),
    device: field(value, 'device', isStr, 'a string'),
    notes: field(value, 'notes', isStrArray, 'a list of strings'),
  };
}

function parseExpertParams(value: Obj): ProbeExpertParams {
  const experts = field(value, 'experts', isNat, 'a whole number');
  if (experts < 1) throw new ProtocolError('field "experts" should be at least 1');
  const groups = field(value, 'groups', isStrArray, 'a list of strings');
  const sized = (key: string, values: number) => sizedBytes(value, key, values) ?? null;
  return {
    t: 'expert-params',
    id: field(value, 'id', isNat, 'a whole number'),
    model: field(value, 'model', isNat, 'a whole number'),
    layer: field(value, 'layer', isNat, 'a whole number'),
    part: field(value, 'part', isNat, 'a whole number'),
    parts: field(value, 'parts', isNat, 'a whole number'),
    experts,
    compute_experts: field(value, 'compute_experts', isNat, 'a whole number'),
    router_name: field(value, 'router_name', isStr, 'a string'),
    router_norms: sized('router_norms', experts * 8),
    router_cosine: sized('router_cosine', experts * experts * 4),
    router_bias_name: field(value, 'router_bias_name', isStr, 'a string'),
    router_bias: sized('router_bias', experts * 8),
    layout: field(value, 'layout', isStr, 'a string'),
    groups,
    params: field(value, 'params', isNat, 'a whole number'),
    expert_norms: sized('expert_norms', experts * 8),
    group_norms: sized('group_norms', groups.length * experts * 8),
    weight_cosine: sized('weight_cosine', experts * experts * 4),
    seconds: field(value, 'seconds', isNum, 'a number'),
    peak_bytes: field(value, 'peak_bytes', isNat, 'a whole number'),
    notes: field(value, 'notes', isStrArray, 'a list of strings'),
  };
}

/** Decode a little-endian float64 payload. */
export function float64s(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.byteLength / 8 }, (_, i) => view.getFloat64(i * 8, true));
}

/** Decode a little-endian int32 payload. */
export function int32s(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.byteLength / 4 }, (_, i) => view.getInt32(i * 4, true));
}

/** Decode a little-endian float32 payload. */
export function float32s(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.byteLength / 4 }, (_, i) => view.getFloat32(i * 4, true));
}

/** Where each layer's experts start in a counts array: offsets[l] = widths[0] + ... + widths[l-1]. */
export function layerOffsets(widths: readonly number[]): number[] {
  const out = new Array<number>(widths.length);
  let sum = 0;
  for (let l = 0; l < widths.length; l++) {
    out[l] = sum;
    sum += widths[l]!;
  }
  return out;
}

/** Decode a counts frame's int64 payload into plain numbers (exact below 2^53). */
export function countsToNumbers(counts: Uint8Array): number[] {
  const view = new DataView(counts.buffer, counts.byteOffset, counts.byteLength);
  const out = new Array<number>(counts.byteLength / 8);
  // low word + high word * 2^32: exact for counts below 2^53 and much faster than BigInt.
  for (let i = 0; i < out.length; i++) out[i] = view.getUint32(i * 8, true) + view.getInt32(i * 8 + 4, true) * 4294967296;
  return out;
}
