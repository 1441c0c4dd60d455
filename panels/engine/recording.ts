/**
 * Recordings: every host message of one job, one JSON value per line after a header line,
 * so that a session can be opened later with no job running. Parsing is strict: a corrupt
 * or foreign file is rejected as a whole with a message that says where and why.
 */
import type { HostMessage } from '../../src/protocol/panel';
import type { LayerInfo } from '../../src/protocol/probe';
import { unknownLayer } from '../../src/analysis/layers';
import { typedListsAsArrays } from '../../src/protocol/typed-lists';

export const RECORDING_FORMAT = 'moe-devtools-recording';
/** 2: updates carry per-layer widths and tokens, layers say how they are read. Version 1 files are upgraded on open. */
export const RECORDING_VERSION = 2;

export interface RecordingHeader {
  format: typeof RECORDING_FORMAT;
  version: number;
  pid: number;
  /** ms since the epoch when recording started. */
  started: number;
}

export interface Recording {
  header: RecordingHeader;
  messages: HostMessage[];
}

export class RecordingError extends Error {}

export function serializeRecording(pid: number, started: number, messages: readonly HostMessage[]): string {
  const header: RecordingHeader = { format: RECORDING_FORMAT, version: RECORDING_VERSION, pid, started };
  const lines = [JSON.stringify(header)];
  // Messages that came over the panel's channel hold typed arrays (protocol/typed-lists.ts): written as the lists the host sent.
  for (const m of messages) lines.push(JSON.stringify(m, typedListsAsArrays));
  return lines.join('\n') + '\n';
}

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isNumArray = (v: unknown): v is number[] => Array.isArray(v) && v.every(isNum);
/** Per-layer measurements may hold null: JSON's spelling of a non-finite number (the -Infinity largest logit of a layer that has seen none). */
const isMeasureArray = (v: unknown): v is Array<number | null> => Array.isArray(v) && v.every((x) => x === null || isNum(x));

/** Why a message is not one a recording may hold, or null when it is fine. */
function invalidMessage(v: unknown): string | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not a JSON object';
  const m = v as Record<string, unknown>;
  switch (m.type) {
    case 'attached':
      return isNum(m.pid) && Array.isArray(m.models) ? null : 'an "attached" message needs pid and models';
    case 'update': {
      if (!isNum(m.pid) || !isNum(m.model) || !isNum(m.passes) || !isNum(m.ts) || !isNum(m.dropped)) return 'an "update" needs pid, model, passes, ts and dropped numbers';
      const widths = m.widths;
      if (!Number.isInteger(m.layers) || (m.layers as number) < 1 || !isNumArray(widths) || widths.length !== m.layers ||
        widths.some((w) => !Number.isInteger(w) || w < 1)) return 'an "update" needs whole layers and one whole width per layer';
      if (!isNumArray(m.counts) || m.counts.length !== widths.reduce((a, b) => a + b, 0)) return '"counts" should hold one number per expert of every layer';
      if (m.tokens !== undefined && (!isNumArray(m.tokens) || m.tokens.length !== m.layers)) return '"tokens" should hold one number per layer';
      for (const key of ['health', 'maxLogit', 'timeS', 'backwardS'] as const) if (m[key] !== undefined && !isMeasureArray(m[key])) return `"${key}" should be a list of numbers`;
      return null;
    }
    case 'losses': {
      // A training run's per-layer losses (NaN is written as null in JSON).
      const rows = (v: unknown) => Array.isArray(v) && v.every((r) => Array.isArray(r) && r.every((x) => x === null || isNum(x)));
      if (!isNum(m.pid) || !isNum(m.model) || !isNumArray(m.passes)) return 'a "losses" message needs pid, model and passes';
      if (!rows(m.aux) || !rows(m.z) || !rows([m.modelAux]) || !rows([m.loss])) return 'a "losses" message needs aux and z rows, modelAux and loss';
      return null;
    }
    case 'layers':
      return isNum(m.pid) && isNum(m.model) && Array.isArray(m.layers) ? null : 'a "layers" message needs pid, model and layers';
    case 'tokens': {
      if (!isNum(m.pid) || !isNum(m.model) || !isNum(m.pass)) return 'a "tokens" message needs pid, model and pass';
      if (!Array.isArray(m.layers)) return 'a "tokens" message needs layers';
      for (const l of m.layers as unknown[]) {
        const x = l as Record<string, unknown>;
        if (typeof x !== 'object' || x === null || !isNum(x.layer) || !isNum(x.n) || !isNum(x.k) || !isNumArray(x.ids)) return 'a token layer needs layer, n, k and ids';
      }
      if (m.texts !== null && m.texts !== undefined && !(Array.isArray(m.texts) && m.texts.every((t) => typeof t === 'string'))) return '"texts" should be strings';
      return null;
    }
    case 'anomaly': {
      const a = m.anomaly as Record<string, unknown> | undefined;
      return isNum(m.pid) && isNum(m.model) && a && typeof a === 'object' && typeof a.metric === 'string' && isNum(a.layer) && isNum(a.ts) && typeof a.message === 'string'
        ? null : 'an "anomaly" needs pid, model and an anomaly with metric, layer, ts and message';
    }
    case 'explanation': {
      if (!isNum(m.pid) || !isNum(m.pass) || !isNum(m.index) || !isNum(m.layer) || !isNum(m.expert) || !isNumArray(m.tokenIds)) {
        return 'an "explanation" needs pid, pass, index, layer, expert and tokenIds';
      }
      const n = m.tokenIds.length;
      for (const key of ['gxiLogit', 'gxiProb', 'igLogit', 'igProb'] as const) {
        if (!isNumArray(m[key]) || m[key].length !== n) return `an "explanation" needs "${key}" with one number per token`;
      }
      for (const key of ['logit', 'prob', 'baselineLogit', 'baselineProb', 'position', 'seconds'] as const) if (!isNum(m[key])) return `an "explanation" needs a number "${key}"`;
      return (m.position as number) < n ? null : 'an "explanation" points at a token outside its sequence';
    }
    case 'expert-params': {
      if (!isNum(m.pid) || !isNum(m.layer) || !Number.isInteger(m.experts) || (m.experts as number) < 1 || !isNum(m.rowStart) || !isNum(m.rowEnd)) {
        return 'an "expert-params" message needs pid, layer, experts and its rows';
      }
      const E = m.experts as number;
      const rows = (m.rowEnd as number) - (m.rowStart as number);
      const nullable = (v: unknown, length: number) => v === null || (Array.isArray(v) && v.length === length && v.every((x) => x === null || isNum(x)));
      for (const key of ['routerNorms', 'routerBias', 'expertNorms'] as const) if (!nullable(m[key], E)) return `"${key}" should hold one value per expert`;
      for (const key of ['routerCosine', 'weightCosine'] as const) if (!nullable(m[key], rows * E)) return `"${key}" should hold ${rows} rows of ${E} values`;
      return null;
    }
    case 'detached':
    case 'attaching':
      return isNum(m.pid) ? null : `a "${m.type}" message needs a pid`;
    case 'ranks':
      return isNum(m.pid) && Array.isArray(m.ranks) && isNum(m.worldSize) ? null : 'a "ranks" message needs pid, worldSize and ranks';
    default:
      return `unexpected message type ${JSON.stringify(m.type)}`;
  }
}

export function parseRecording(text: string): Recording {
  const lines = text.split('\n');
  let header: unknown;
  try {
    header = JSON.parse(lines[0] ?? '');
  } catch {
    throw new RecordingError('This is not a MoE DevTools recording (the first line is not JSON).');
  }
  const h = header as Partial<RecordingHeader> | null;
  if (!h || typeof h !== 'object' || h.format !== RECORDING_FORMAT) throw new RecordingError('This is not a MoE DevTools recording (no recording header).');
  if (h.version !== RECORDING_VERSION && h.version !== 1) {
    throw new RecordingError(`Recording version ${String(h.version)} is not supported (this panel reads versions 1 and ${RECORDING_VERSION}).`);
  }
  if (!isNum(h.pid) || !isNum(h.started)) throw new RecordingError('The recording header lacks its pid or start time.');
  const messages: HostMessage[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (!line.trim()) continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new RecordingError(`The recording is corrupt: line ${i + 1} is not valid JSON.`);
    }
    if (h.version === 1) value = fromVersion1(value);
    const why = invalidMessage(value);
    if (why) throw new RecordingError(`The recording is corrupt: line ${i + 1}: ${why}.`);
    messages.push(value as HostMessage);
  }
  if (!messages.some((m) => m.type === 'update')) throw new RecordingError('The recording holds no routing counts.');
  return { header: h as RecordingHeader, messages };
}

/**
 * A version-1 message as version 2 has it: one width for every layer (`experts`), no token
 * totals (the analyses then count tokens as assignments / top-k, as version 1 did), and
 * layers described by index only where the probe said less than it does now.
 */
function fromVersion1(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  const m = value as Record<string, unknown>;
  if (m.type === 'update' && Number.isInteger(m.layers) && Number.isInteger(m.experts) && m.widths === undefined) {
    const { experts, ...rest } = m;
    return { ...rest, widths: new Array(m.layers as number).fill(experts) };
  }
  if (m.type === 'attached' && Array.isArray(m.models)) {
    return {
      ...m,
      models: (m.models as Array<Record<string, unknown>>).map((model) => ({
        ...model,
        layers: Array.isArray(model.layers) ? (model.layers as Array<Partial<LayerInfo>>).map((l, i) => ({
          ...unknownLayer(i, Number(l.experts) || 1, Number(l.top_k) || 1), ...l,
        })) : [],
      })),
    };
  }
  return value;
}

/** The same messages with their pid replaced (a replayed job gets an id of its own). */
export function withPid(messages: readonly HostMessage[], pid: number): HostMessage[] {
  return messages.map((m) => ('pid' in m ? ({ ...m, pid } as HostMessage) : m));
}
