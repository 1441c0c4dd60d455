/**
 * Messages between the panel and the native host (JSON over native messaging,
 * relayed by the service worker with the same content; to the panel over a
 * MessageChannel with long number lists as typed arrays, see panel-channel.ts).
 * One place for both sides.
 *
 * Native messaging frames each message as a 4-byte length in native byte order
 * (little-endian on every platform Chrome runs on) followed by that many bytes of
 * UTF-8 JSON, on the host's stdin (requests) and stdout (messages). Send hello
 * first; closing stdin makes the host detach from every job and exit.
 */
import { describeValue, EXPLAIN_BASELINES, type ExplainBaseline, type FrameworkInfo, type LayerInfo, type ModelInfo, type ProbeVisibility } from './probe';

export const PANEL_PROTOCOL_VERSION = 1;
/** Chrome disconnects a native host that sends a message over 1 MiB. */
export const MAX_HOST_MESSAGE_BYTES = 1024 * 1024;
export const HOST_NAME = 'com.moe_devtools.host';

/**
 * A process's place in a distributed job, as what launched it says (its environment, its parent),
 * read before attaching. Processes with the same `job` are ranks of one job.
 */
export interface ProcessDist {
  /** Same value = same job: from TORCHELASTIC_RUN_ID and MASTER_ADDR:MASTER_PORT, a Ray raylet, or a launcher parent. */
  job: string;
  /** How the job is named in the list, e.g. "torchrun 3f9c1d2e, world 4". */
  label: string;
  rank: number | null;
  worldSize: number | null;
  localRank: number | null;
}

export interface ProcessInfo {
  pid: number;
  /** Command line, joined with spaces, truncated for display. */
  cmdline: string;
  python: string | null;
  /** torch's libraries are loaded in the process. */
  torch: boolean;
  /** The frameworks whose libraries the process has loaded: torch, jax, tensorflow, onnxruntime (see FRAMEWORKS). */
  frameworks?: string[];
  /** A probe is already listening in this process (moe_probe.attach / python -m moe_probe run, or attached before). */
  probe: boolean;
  attached: boolean;
  /** Present when the process is one rank of a distributed job. */
  dist?: ProcessDist;
}

/**
 * Ids in messages: a job's `pid` is its process id, or, at HANDLE_BASE and above (never a real pid),
 * a handle the host gave a distributed job (all its ranks as one) or a rank reached through a relay.
 */
export const HANDLE_BASE = 2 ** 30;

/** One rank of a distributed job, as the host sees it. */
export interface RankInfo {
  /** The id of the rank's process in messages: its pid here, a handle for a rank behind a relay. */
  handle: number;
  /** Its process id on its own machine. */
  pid: number;
  rank: number;
  /** Its machine: the host name, or the relay's name for it. */
  node: string;
  /** The relay it is reached through ("" for this machine). */
  via: string;
  status: 'attached' | 'exited' | 'lost' | 'excluded' | 'detached';
  /** Per MoE layer: the global experts it holds (expert-parallel layers), or null where it holds all. */
  held: Array<number[] | null>;
  /** Why it stopped or was left out. */
  message?: string;
}

/**
 * One rank's cumulative figures since it was attached (its own clock), carried by its job's
 * update: totals over the MoE layers, and one layer (the update's `rankLayer`) in detail, so that
 * an update of many ranks stays small. `load` is what its own experts processed: the work that
 * makes the slowest GPU.
 */
export interface RankSample {
  handle: number;
  rank: number;
  passes: number;
  /** The rank's probe clock, seconds since the epoch. */
  ts: number;
  /** Tokens of its own batches through the first MoE layer. */
  tokens: number;
  /** Token-expert assignments its experts processed, all MoE layers (the sum of its counts). */
  load: number;
  /** The same in `rankLayer`. */
  layerLoad: number;
  /** Seconds in its MoE blocks, all layers (expert parallel: waiting in the all-to-all included). */
  timeS?: number;
  /** Seconds inside its own experts, all layers (expert parallel): its compute alone. */
  expertS?: number;
  /** What its experts processed per global expert in `rankLayer` (left out when a job has too many ranks for one message). */
  counts?: number[];
  /** Snapshots of this rank dropped on the way. */
  dropped: number;
}

/** 'ranks': a distributed job, all its ranks as one (each rank has its own method); 'relay': a rank reached through a relay. */
export type AttachMethod = 'socket' | 'remote_exec' | 'ptrace' | 'gdb' | 'lldb' | 'tcp' | 'ranks' | 'relay';

/** What one attach method did: the panel lists these when all fail, and shows how the one that worked went. */
export interface AttachAttempt {
  method: AttachMethod;
  ok: boolean;
  message: string;
}

/** Error codes the panel knows how to explain; `message` and `hint` carry the words. */
export type ErrorCode =
  | 'bad_request'
  | 'no_such_process'
  | 'not_python'
  | 'not_our_user'
  | 'no_torch'
  | 'no_moe'
  | 'gdb_missing'
  | 'lldb_missing'
  | 'ptrace_denied'
  | 'inject_failed'
  | 'attach_timeout'
  | 'process_exited'
  | 'probe_failed'
  | 'protocol_error'
  | 'already_attached'
  | 'unsupported_platform'
  | 'host_unavailable'
  | 'partial_visibility'
  | 'history_unavailable'
  | 'rank_conflict'
  | 'rank_lost'
  | 'relay_failed'
  | 'internal';

export type PanelRequest =
  | { type: 'hello'; version: number }
  | { type: 'list' }
  | { type: 'attach'; pid: number }
  | { type: 'detach'; pid: number }
  /** Past counts snapshots the host still holds for a job, optionally one layer only, within [from, to] (probe time, s). */
  | { type: 'history'; pid: number; from?: number; to?: number; layer?: number }
  /** The per-token routing of one sampled pass, from the host's history. */
  | { type: 'token-pass'; pid: number; pass: number }
  /** Attach to a probe listening on TCP (moe_probe.attach(model, tcp_port=...)), e.g. through an SSH tunnel. */
  | { type: 'connect'; address: string; token: string }
  /** Host settings: history memory cap (MiB), panel update rate (Hz), and the history database's retention (MiB, days). */
  | { type: 'configure'; historyMB?: number; updateHz?: number; dbMaxMB?: number; dbMaxDays?: number }
  /** Connect to a relay (`moe-devtools relay` on another node), through an SSH tunnel to its loopback port. */
  | { type: 'connect-relay'; address: string; token: string }
  /** The layer whose per-rank, per-expert counts a distributed job's updates carry (RankSample.counts). */
  | { type: 'rank-layer'; pid: number; layer: number }
  /** The sessions in the history database (answered with 'sessions'). */
  | { type: 'sessions' }
  /**
   * A stored session's messages over [from, to] (probe clock, s since the epoch; default all), with
   * at most `points` counts snapshots per model spread evenly over the range (default all). Answered
   * with 'session-data' parts; `purpose` is echoed so the panel knows whether to show or save them.
   */
  | { type: 'session-open'; session: number; from?: number; to?: number; points?: number; purpose?: 'view' | 'export' }
  | { type: 'session-delete'; session: number }
  /** A .moerec file's text into the history, in parts (each under 32 MiB) joined in order; answered with 'session-imported'. */
  | { type: 'session-import'; name: string; part: number; done: boolean; text: string }
  /**
   * Explain why sampled token `index` of pass `pass` went to `expert` in `layer` (see ProbeExplanation).
   * `id` is the panel's own, echoed in the answer. Steps default to 32, the baseline to 'zero'.
   */
  | ExplainRequest
  /** Analyse the experts' weights of the listed layers (all when absent); answered by expert-params messages. */
  | { type: 'expert-params'; pid: number; id: number; model: number; layers?: number[]; chunkMB?: number };

export interface ExplainRequest {
  type: 'explain';
  pid: number;
  id: number;
  model: number;
  pass: number;
  index: number;
  layer: number;
  expert: number;
  steps?: number;
  baseline?: ExplainBaseline;
  baselineToken?: number;
  /** Bounds of the work: seconds (default 60) and MiB held for gradients at once (default 512). */
  maxSeconds?: number;
  maxMB?: number;
}

/** An explanation as the panel gets it (ProbeExplanation with plain numbers). */
export interface ExplanationMessage {
  type: 'explanation';
  pid: number;
  id: number;
  model: number;
  pass: number;
  index: number;
  layer: number;
  expert: number;
  row: number;
  position: number;
  tokenIds: number[];
  texts: string[] | null;
  steps: number;
  baseline: string;
  baselineToken: number;
  probKind: string;
  logit: number;
  prob: number;
  baselineLogit: number;
  baselineProb: number;
  /** Per position: gradient x input and integrated gradients, of the score and of the probability. */
  gxiLogit: number[];
  gxiProb: number[];
  igLogit: number[];
  igProb: number[];
  /** Top-k experts of the recomputed scores at the token. */
  recomputed: number[];
  seconds: number;
  peakBytes: number;
  batch: number;
  device: string;
  notes: string[];
}

/**
 * One MoE layer's experts (ProbeExpertParams), in as many messages as its matrices need to stay under
 * the message limit: each carries matrix rows [rowStart, rowEnd) (row-major, null where the probe sent
 * NaN); the vectors come with the part that starts at row 0.
 */
export interface ExpertParamsMessage {
  type: 'expert-params';
  pid: number;
  id: number;
  model: number;
  layer: number;
  /** The layer's place among the request's layers. */
  part: number;
  parts: number;
  experts: number;
  computeExperts: number;
  rowStart: number;
  rowEnd: number;
  routerName: string;
  routerNorms: Array<number | null> | null;
  routerCosine: Array<number | null> | null;
  routerBiasName: string;
  routerBias: Array<number | null> | null;
  layout: string;
  groups: string[];
  params: number;
  expertNorms: Array<number | null> | null;
  /** [groups x experts], row-major. */
  groupNorms: Array<number | null> | null;
  weightCosine: Array<number | null> | null;
  seconds: number;
  peakBytes: number;
  notes: string[];
}

export interface JobUpdate {
  type: 'update';
  pid: number;
  model: number;
  /** Passes (root forward calls) completed since attach, as of these counts. */
  passes: number;
  layers: number;
  /** Experts of each layer; layers may differ (see layerOffsets in protocol/probe.ts). */
  widths: number[];
  /** Cumulative assignments to each (layer, expert) since attach: layer 0's experts, then layer 1's, ... (sum(widths) values). */
  counts: number[];
  /** Cumulative tokens routed through each layer since attach (absent in version-1 recordings). */
  tokens?: number[];
  /** Probe wall-clock time of the snapshot, seconds since the epoch. */
  ts: number;
  /** Snapshots dropped on the way (probe queue full or host coalescing). */
  dropped: number;
  /** Router health per layer, cumulative, row-major [layers x HEALTH_COLUMNS] (see protocol/probe.ts); absent if not measured. */
  health?: number[];
  /** Largest finite router logit per layer. */
  maxLogit?: number[];
  /** Seconds inside each MoE block, cumulative. */
  timeS?: number[];
  /** Seconds the probe spent in its own hooks, cumulative. */
  probeS?: number;
  /** Seconds inside the process's own experts per layer (expert-parallel jobs), cumulative. */
  expertS?: number[];
  prefill?: number;
  decode?: number;
  shape?: number[];
  /** Per-token records dropped on the way. */
  droppedTokens?: number;
  /** How the passes ran (torch.compile, CUDA graphs) and what the probe could not see; as the probe sent it. */
  visibility?: ProbeVisibility;
  /** Passes run in training mode, cumulative. */
  train?: number;
  /** Backward passes seen, cumulative. */
  backward?: number;
  /** Seconds in each MoE layer's backward, cumulative. */
  backwardS?: number[];
  /**
   * A distributed job's update: the counts above are the sum over its ranks (passes and tokens too,
   * so per-pass figures are per rank), and each rank's own figures are here.
   */
  ranks?: RankSample[];
  /** The layer of RankSample.counts. */
  rankLayer?: number;
}

/** Per-layer training losses of some passes (see ProbeLosses): aux and z are [passes][layers], NaN as null. */
export interface LossesUpdate {
  type: 'losses';
  pid: number;
  model: number;
  passes: number[];
  ts: number;
  aux: Array<Array<number | null>>;
  z: Array<Array<number | null>>;
  modelAux: Array<number | null>;
  loss: Array<number | null>;
}

/** The routing of every sampled token of one pass. */
export interface TokenUpdate {
  type: 'tokens';
  pid: number;
  model: number;
  pass: number;
  phase: 'prefill' | 'decode';
  /** Input token ids of the sampled tokens (the first n of the batch), when known. */
  tokenIds: number[] | null;
  /** The tokenizer's string per token, when the job has a tokenizer alive. */
  texts: string[] | null;
  /** Per MoE layer: expert ids [n x k] (-1: an empty slot of a variable-k layer) and weights [n x k], row-major. */
  layers: Array<{ layer: number; n: number; k: number; ids: number[]; weights: number[] | null }>;
}

/** One session of the history database, as the History view lists it. */
export interface HistorySession {
  id: number;
  /** The job's pid (on the machine it ran on). */
  pid: number;
  /** 'attach': recorded while attached; 'import': from a .moerec file. */
  source: 'attach' | 'import';
  /** The job's command line, or the imported file's name. */
  name: string;
  modelClass: string;
  modelType: string;
  layers: number;
  /** Experts of all layers together (the sum of the widths). */
  experts: number;
  /** ms since the epoch. */
  started: number;
  /** ms since the epoch; null while a host is still recording it. */
  ended: number | null;
  /** Probe clock of the first and last snapshot, s since the epoch (null when none). */
  firstTs: number | null;
  lastTs: number | null;
  passes: number;
  snapshots: number;
  tokenPasses: number;
  anomalies: number;
  /** Bytes of stored payload. */
  bytes: number;
}

/** The history database: where it is, how big, its retention, and why it is off when it is. */
export interface HistoryDatabaseStatus {
  path: string;
  enabled: boolean;
  fileBytes: number;
  maxBytes: number;
  maxDays: number;
  /** Counts snapshots not written because the database was behind (the relay never waits for it). */
  droppedWrites: number;
  error?: { code: string; message: string; hint: string };
}

export const ANOMALY_METRICS = ['routing', 'router_entropy', 'z_loss', 'nan_inf', 'time'] as const;
export type AnomalyMetric = (typeof ANOMALY_METRICS)[number];

/** A change found by the online change detection (src/analysis/anomaly.ts). */
export interface AnomalyFinding {
  metric: AnomalyMetric;
  /** The probe's layer index. */
  layer: number;
  label: string;
  /** When the change began, probe clock, s since the epoch. */
  ts: number;
  /** When it was detected (end of the block that crossed the threshold). */
  detectedTs: number;
  /** After the change: JS divergence (bits) for routing, non-finite logits seen for nan_inf, else the new level. */
  value: number;
  /** Before the change: 0 for routing and nan_inf, else the reference median. */
  reference: number;
  /** The reference's time span, probe clock. */
  referenceFrom: number;
  referenceTo: number;
  /** Routing: the experts whose share changed most (shares of the layer's assignments before and after). */
  experts?: Array<{ expert: number; shareA: number; shareB: number; change: number }>;
  message: string;
}

export type HostMessage =
  /** `node`: a relay's name for its machine (relays only). */
  | { type: 'hello'; version: number; host: string; platform: string; node?: string }
  | { type: 'processes'; processes: ProcessInfo[] }
  | { type: 'attaching'; pid: number; method: AttachMethod }
  | {
      type: 'attached';
      pid: number;
      method: AttachMethod;
      ms: number;
      python: string;
      framework: string;
      frameworkVersion: string;
      /** Every framework the job has loaded, with its version. */
      frameworks?: FrameworkInfo[];
      argv: string[];
      models: ModelInfo[];
      /** What the probe can see only partly (CUDA graph replays, compiled modules). */
      warnings?: Array<{ code: string; message: string }>;
      /** How the probe got in: each method tried, the one that worked last. */
      attempts?: AttachAttempt[];
      /** One rank of a distributed job: where it sits (its job's messages come under `group`). */
      rank?: { group: number; job: string; label: string; rank: number; worldSize: number; node: string };
      /** A distributed job shown as one (method 'ranks'): its key, label and world size. */
      job?: { key: string; label: string; worldSize: number };
    }
  | JobUpdate
  | TokenUpdate
  | LossesUpdate
  /** A model's layers as the probe now understands them (after the first calls showed how routing is read). */
  | { type: 'layers'; pid: number; model: number; layers: LayerInfo[] }
  /** Answer to a history request; long answers come in several parts, the last with done. */
  | { type: 'history'; pid: number; layer?: number; updates: JobUpdate[]; part: number; done: boolean }
  /** Once a second: the host's own memory and what it had to drop. */
  | {
      type: 'host-stats';
      rssBytes: number;
      historyBytes: number;
      historyCapBytes: number;
      historyEvicted: number;
      /** Updates and token records not sent because the browser was reading too slowly. */
      droppedToPanel: number;
      /** The history database's size and what it could not keep up with, when it is on. */
      database?: { fileBytes: number; droppedWrites: number };
    }
  /** An anomaly found in an attached job's routing (also stored with its session). */
  | { type: 'anomaly'; pid: number; model: number; anomaly: AnomalyFinding }
  | { type: 'sessions'; sessions: HistorySession[]; database: HistoryDatabaseStatus }
  /**
   * Part of a stored session's messages ('attached', 'layers', 'update', 'tokens', 'anomaly', with the
   * job's pid); the first part carries `info` and `available` (counts snapshots in the range before
   * down-sampling), the last has done.
   */
  | { type: 'session-data'; session: number; purpose: 'view' | 'export'; part: number; done: boolean; info?: HistorySession; available?: number; messages: HostMessage[] }
  | { type: 'session-imported'; session: number; name: string }
  | ExplanationMessage
  | ExpertParamsMessage
  /** The probe could not answer an explain or expert-params request (see ProbeRefused for the codes). */
  | { type: 'refused'; pid: number; id: number; request: 'explain' | 'expert-params' | 'unknown'; code: string; message: string }
  /** A distributed job's ranks: sent when one joins, ends or is left out. */
  | { type: 'ranks'; pid: number; key: string; label: string; worldSize: number; ranks: RankInfo[] }
  /** A relay connected (connect-relay): its address and the name of its node. */
  | { type: 'relay'; address: string; node: string; status: 'connected' | 'closed'; message?: string }
  | { type: 'detached'; pid: number; reason: 'requested' | 'process_exited' | 'probe_closed' | 'error'; message?: string }
  | { type: 'error'; pid?: number; code: ErrorCode; message: string; hint?: string; attempts?: AttachAttempt[] };

/** Validate a message from the panel; returns an error string or the request. */
export function parsePanelRequest(value: unknown): PanelRequest | { error: string } {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { error: 'message should be a JSON object' };
  const msg = value as Record<string, unknown>;
  const pidOk = (p: unknown): p is number => typeof p === 'number' && Number.isInteger(p) && p > 0 && p < 2 ** 31;
  switch (msg.type) {
    case 'hello':
      return typeof msg.version === 'number' ? { type: 'hello', version: msg.version } : { error: 'hello needs a version number' };
    case 'list':
      return { type: 'list' };
    case 'attach':
    case 'detach':
      return pidOk(msg.pid) ? { type: msg.type, pid: msg.pid } : { error: `${msg.type} needs a positive integer pid` };
    case 'history': {
      if (!pidOk(msg.pid)) return { error: 'history needs a positive integer pid' };
      const req: Extract<PanelRequest, { type: 'history' }> = { type: 'history', pid: msg.pid };
      for (const key of ['from', 'to'] as const) {
        if (msg[key] === undefined) continue;
        if (typeof msg[key] !== 'number' || !Number.isFinite(msg[key])) return { error: `history: ${key} should be a number (seconds)` };
        req[key] = msg[key] as number;
      }
      if (msg.layer !== undefined) {
        if (typeof msg.layer !== 'number' || !Number.isInteger(msg.layer) || msg.layer < 0) return { error: 'history: layer should be a whole number' };
        req.layer = msg.layer;
      }
      return req;
    }
    case 'connect':
    case 'connect-relay': {
      const m = typeof msg.address === 'string' ? /^(127\.\d+\.\d+\.\d+|localhost|\[::1\]):(\d{1,5})$/.exec(msg.address) : null;
      if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
        return { error: `${msg.type} needs a loopback address such as 127.0.0.1:PORT (forward the remote port with ssh -L)` };
      }
      const whose = msg.type === 'connect' ? 'probe' : 'relay';
      if (typeof msg.token !== 'string' || !/^[0-9a-f]{16,128}$/.test(msg.token)) return { error: `${msg.type} needs the ${whose} token (hex)` };
      return { type: msg.type, address: msg.address as string, token: msg.token };
    }
    case 'rank-layer':
      if (!pidOk(msg.pid)) return { error: 'rank-layer needs a positive integer pid' };
      return typeof msg.layer === 'number' && Number.isInteger(msg.layer) && msg.layer >= 0
        ? { type: 'rank-layer', pid: msg.pid, layer: msg.layer }
        : { error: 'rank-layer needs a whole layer number' };
    case 'token-pass':
      if (!pidOk(msg.pid)) return { error: 'token-pass needs a positive integer pid' };
      return typeof msg.pass === 'number' && Number.isInteger(msg.pass) && msg.pass > 0
        ? { type: 'token-pass', pid: msg.pid, pass: msg.pass }
        : { error: 'token-pass needs a positive integer pass' };
    case 'sessions':
      return { type: 'sessions' };
    case 'session-open':
    case 'session-delete': {
      if (typeof msg.session !== 'number' || !Number.isInteger(msg.session) || msg.session < 1) return { error: `${msg.type} needs a session id` };
      if (msg.type === 'session-delete') return { type: 'session-delete', session: msg.session };
      const req: Extract<PanelRequest, { type: 'session-open' }> = { type: 'session-open', session: msg.session };
      for (const key of ['from', 'to'] as const) {
        if (msg[key] === undefined) continue;
        if (typeof msg[key] !== 'number' || !Number.isFinite(msg[key])) return { error: `session-open: ${key} should be a number (seconds since the epoch)` };
        req[key] = msg[key] as number;
      }
      if (msg.points !== undefined) {
        if (typeof msg.points !== 'number' || !Number.isInteger(msg.points) || msg.points < 2) return { error: 'session-open: points should be a whole number of at least 2' };
        req.points = msg.points;
      }
      if (msg.purpose !== undefined) {
        if (msg.purpose !== 'view' && msg.purpose !== 'export') return { error: 'session-open: purpose should be "view" or "export"' };
        req.purpose = msg.purpose;
      }
      return req;
    }
    case 'session-import':
      if (typeof msg.name !== 'string' || typeof msg.text !== 'string') return { error: 'session-import needs a name and the text of a .moerec file' };
      if (typeof msg.part !== 'number' || !Number.isInteger(msg.part) || msg.part < 0 || typeof msg.done !== 'boolean') return { error: 'session-import needs a part number and done' };
      return { type: 'session-import', name: msg.name, part: msg.part, done: msg.done, text: msg.text };
    case 'explain':
      return parseExplainRequest(msg, pidOk);
    case 'expert-params': {
      if (!pidOk(msg.pid)) return { error: 'expert-params needs a positive integer pid' };
      if (!isWhole(msg.id) || !isWhole(msg.model)) return { error: 'expert-params needs whole id and model numbers' };
      const req: Extract<PanelRequest, { type: 'expert-params' }> = { type: 'expert-params', pid: msg.pid, id: msg.id, model: msg.model };
      if (msg.layers !== undefined) {
        if (!Array.isArray(msg.layers) || !msg.layers.every(isWhole) || msg.layers.length > 4096) return { error: 'expert-params: layers should list whole layer numbers' };
        req.layers = msg.layers as number[];
      }
      if (msg.chunkMB !== undefined) {
        if (typeof msg.chunkMB !== 'number' || !(msg.chunkMB >= 1 && msg.chunkMB <= 4096)) return { error: 'expert-params: chunkMB should be between 1 and 4096' };
        req.chunkMB = msg.chunkMB;
      }
      return req;
    }
    case 'configure': {
      const req: Extract<PanelRequest, { type: 'configure' }> = { type: 'configure' };
      for (const [key, lo, hi] of [['dbMaxMB', 1, 1 << 24], ['dbMaxDays', 0.001, 36500]] as const) {
        if (msg[key] === undefined) continue;
        if (typeof msg[key] !== 'number' || !(msg[key] >= lo && msg[key] <= hi)) return { error: `configure: ${key} should be between ${lo} and ${hi}` };
        req[key] = msg[key] as number;
      }
      if (msg.historyMB !== undefined) {
        if (typeof msg.historyMB !== 'number' || !(msg.historyMB >= 1 && msg.historyMB <= 65536)) return { error: 'configure: historyMB should be between 1 and 65536' };
        req.historyMB = msg.historyMB;
      }
      if (msg.updateHz !== undefined) {
        if (typeof msg.updateHz !== 'number' || !(msg.updateHz >= 1 && msg.updateHz <= 120)) return { error: 'configure: updateHz should be between 1 and 120' };
        req.updateHz = msg.updateHz;
      }
      return req;
    }
    default:
      return { error: `unknown request type ${describeValue(msg.type)}` };
  }
}

const isWhole = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < 2 ** 31;

function parseExplainRequest(msg: Record<string, unknown>, pidOk: (p: unknown) => p is number): ExplainRequest | { error: string } {
  if (!pidOk(msg.pid)) return { error: 'explain needs a positive integer pid' };
  for (const key of ['id', 'model', 'pass', 'index', 'layer', 'expert'] as const) {
    if (!isWhole(msg[key])) return { error: `explain needs a whole number ${key}` };
  }
  const req: ExplainRequest = {
    type: 'explain', pid: msg.pid, id: msg.id as number, model: msg.model as number, pass: msg.pass as number,
    index: msg.index as number, layer: msg.layer as number, expert: msg.expert as number,
  };
  if (msg.steps !== undefined) {
    if (!isWhole(msg.steps) || msg.steps < 1 || msg.steps > 1024) return { error: 'explain: steps should be a whole number from 1 to 1024' };
    req.steps = msg.steps;
  }
  if (msg.baseline !== undefined) {
    if (!(EXPLAIN_BASELINES as readonly unknown[]).includes(msg.baseline)) return { error: `explain: baseline should be one of ${EXPLAIN_BASELINES.join(', ')}` };
    req.baseline = msg.baseline as ExplainBaseline;
  }
  if (msg.baselineToken !== undefined) {
    if (!isWhole(msg.baselineToken)) return { error: 'explain: baselineToken should be a token id' };
    req.baselineToken = msg.baselineToken;
  }
  if (req.baseline === 'token' && req.baselineToken === undefined) return { error: 'explain: a token baseline needs baselineToken' };
  if (msg.maxSeconds !== undefined) {
    if (typeof msg.maxSeconds !== 'number' || !(msg.maxSeconds >= 0.1 && msg.maxSeconds <= 3600)) return { error: 'explain: maxSeconds should be between 0.1 and 3600' };
    req.maxSeconds = msg.maxSeconds;
  }
  if (msg.maxMB !== undefined) {
    if (typeof msg.maxMB !== 'number' || !(msg.maxMB >= 1 && msg.maxMB <= 1048576)) return { error: 'explain: maxMB should be between 1 and 1048576' };
    req.maxMB = msg.maxMB;
  }
  return req;
}

/** Name of the runtime port between the panel and the service worker. */
export const PANEL_PORT_NAME = 'moe-panel';
