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

export const PROBE_PROTOCOL_VERSION = 1;
export const MAX_PROBE_FRAME_BYTES = 16 * 1024 * 1024;

export interface LayerInfo {
  index: number;
  name: string;
  arch: string;
  experts: number;
  top_k: number;
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
  error?: ProbeErrorInfo;
}

/** Cumulative per-(layer, expert) token counts since attach, as of the end of pass `passes`. */
export interface ProbeCounts {
  t: 'counts';
  model: number;
  seq: number;
  ts: number;
  passes: number;
  layers: number;
  experts: number;
  /** int64 little-endian, layers * experts values, row-major by layer. */
  counts: Uint8Array;
  /** Snapshots the probe dropped because its queue was full (cumulative). */
  dropped: number;
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

export type ProbeFrame = ProbeHello | ProbeCounts | ProbeFailure | ProbeBye;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

type Obj = Record<string, unknown>;

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
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isStrArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);

function parseLayer(value: unknown): LayerInfo {
  if (!isObj(value)) throw new ProtocolError('layer should be a map');
  const experts = field(value, 'experts', isNat, 'a whole number');
  const topK = field(value, 'top_k', isNat, 'a whole number');
  if (experts < 1 || topK < 1 || topK > experts) throw new ProtocolError(`layer has ${experts} experts and top_k ${topK}`);
  return {
    index: field(value, 'index', isNat, 'a whole number'),
    name: field(value, 'name', isStr, 'a string'),
    arch: field(value, 'arch', isStr, 'a string'),
    experts,
    top_k: topK,
  };
}

function parseModel(value: unknown): ModelInfo {
  if (!isObj(value)) throw new ProtocolError('model should be a map');
  const layers = value.layers;
  if (!Array.isArray(layers)) throw new ProtocolError('field "layers" should be a list');
  return {
    id: field(value, 'id', isNat, 'a whole number'),
    class: field(value, 'class', isStr, 'a string'),
    model_type: field(value, 'model_type', isStr, 'a string'),
    device: field(value, 'device', isStr, 'a string'),
    dtype: field(value, 'dtype', isStr, 'a string'),
    layers: layers.map(parseLayer),
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
      return hello;
    }
    case 'counts': {
      const layers = field(value, 'layers', isNat, 'a whole number');
      const experts = field(value, 'experts', isNat, 'a whole number');
      const counts = field(value, 'counts', isBytes, 'binary data');
      if (counts.byteLength !== layers * experts * 8) {
        throw new ProtocolError(`counts holds ${counts.byteLength} bytes, expected ${layers}x${experts} int64 values`);
      }
      return {
        t,
        model: field(value, 'model', isNat, 'a whole number'),
        seq: field(value, 'seq', isNat, 'a whole number'),
        ts: field(value, 'ts', isNum, 'a number'),
        passes: field(value, 'passes', isNat, 'a whole number'),
        layers,
        experts,
        counts,
        dropped: field(value, 'dropped', isNat, 'a whole number'),
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
    default:
      throw new ProtocolError(`unknown frame type ${JSON.stringify(t)}`);
  }
}

/** Decode a counts frame's int64 payload into plain numbers (exact below 2^53). */
export function countsToNumbers(counts: Uint8Array): number[] {
  const view = new DataView(counts.buffer, counts.byteOffset, counts.byteLength);
  const out = new Array<number>(counts.byteLength / 8);
  // low word + high word * 2^32: exact for counts below 2^53 and much faster than BigInt.
  for (let i = 0; i < out.length; i++) out[i] = view.getUint32(i * 8, true) + view.getInt32(i * 8 + 4, true) * 4294967296;
  return out;
}
