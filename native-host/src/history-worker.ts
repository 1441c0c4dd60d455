/**
 * The history database's own thread (worker_threads): every SQLite call, the snapshot coding and
 * retention run here, so the host's main thread, which relays routing to the panel, never waits
 * on the disk. Writes arrive as messages and are committed in batches (one transaction, one sync
 * about every WRITE_BATCH_MS); reads and imports are requests answered by id, long answers in parts.
 *
 * Messages: see HistoryService (history-service.ts), the only sender.
 */
import { parentPort } from 'node:worker_threads';
import type { HostMessage } from '../../src/protocol/panel';
import { countsToNumbers, float64s, type ProbeCounts, type ProbeTokens, type LayerInfo } from '../../src/protocol/probe';
import type { Anomaly } from '../../src/analysis/anomaly';
import { parseRecording, RecordingError } from '../../panels/engine/recording';
import { HistoryDatabase, HistoryDbError, importMessages, type ReadOptions, type RetentionPolicy, type StoredCounts } from './history-db';

export type ToWorker =
  | { op: 'open'; file: string; policy: RetentionPolicy }
  | { op: 'start'; key: number; pid: number; name: string; started: number; attached: Extract<HostMessage, { type: 'attached' }> }
  | { op: 'counts'; key: number; frame: ProbeCounts }
  | { op: 'tokens'; key: number; ts: number; frame: ProbeTokens }
  | { op: 'layers'; key: number; model: number; layers: LayerInfo[] }
  | { op: 'anomaly'; key: number; model: number; anomaly: Anomaly }
  | { op: 'end'; key: number; ended: number }
  | { op: 'policy'; policy: RetentionPolicy }
  | { op: 'list'; id: number }
  | { op: 'read'; id: number; session: number; options: ReadOptions; partBytes: number }
  | { op: 'delete'; id: number; session: number }
  | { op: 'import'; id: number; name: string; text: string }
  | { op: 'close' };

export type FromWorker =
  | { op: 'opened'; fileBytes: number }
  | { op: 'failed'; error: { code: string; message: string; hint: string } }
  | { op: 'written'; counts: number; fileBytes: number }
  | { op: 'reply'; id: number; result?: unknown; error?: { code: string; message: string; hint: string } }
  | { op: 'part'; id: number; messages: HostMessage[]; first: boolean; info?: unknown; available?: number }
  | { op: 'closed' };

const WRITE_BATCH_MS = 250;
const RETENTION_EVERY_MS = 30_000;

type Write = Exclude<ToWorker, { op: 'open' | 'policy' | 'list' | 'read' | 'delete' | 'import' | 'close' }>;

const port = parentPort!;
let db: HistoryDatabase | null = null;
let policy: RetentionPolicy = { maxBytes: Infinity, maxAgeMs: Infinity };
/** The writer's session id for each of the host's job keys. */
const sessions = new Map<number, number>();
let queue: Write[] = [];
let timer: NodeJS.Timeout | null = null;
let lastRetention = 0;

const post = (m: FromWorker) => port.postMessage(m);

function describe(err: unknown): { code: string; message: string; hint: string } {
  if (err instanceof HistoryDbError) return { code: err.code, message: err.message, hint: err.hint };
  if (err instanceof RecordingError) return { code: 'bad_recording', message: err.message, hint: 'Import the .moerec files saved by the panel or by moe-devtools record.' };
  const message = (err as Error)?.message ?? String(err);
  if (db && /malformed|not a database|corrupt/i.test(message)) {
    const e = HistoryDatabase.corrupt(db.file, message);
    return { code: e.code, message: e.message, hint: e.hint };
  }
  return { code: 'io', message: `History database: ${message}`, hint: 'History keeps going with the next snapshots; see the host log for details.' };
}

function storedCounts(f: ProbeCounts): StoredCounts {
  return {
    model: f.model, ts: f.ts, passes: f.passes, widths: f.widths, dropped: f.dropped,
    values: {
      counts: Float64Array.from(countsToNumbers(f.counts)),
      tokens: Float64Array.from(countsToNumbers(f.tokens)),
      health: f.health ? Float64Array.from(float64s(f.health)) : null,
      maxLogit: f.max_logit ? Float64Array.from(float64s(f.max_logit)) : null,
      timeS: f.time_s ? Float64Array.from(f.time_s) : null,
    },
    ...(f.probe_s !== undefined ? { probeS: f.probe_s } : {}), ...(f.prefill !== undefined ? { prefill: f.prefill } : {}),
    ...(f.decode !== undefined ? { decode: f.decode } : {}), ...(f.shape ? { shape: f.shape } : {}),
    ...(f.dropped_tokens !== undefined ? { droppedTokens: f.dropped_tokens } : {}),
  };
}

function flush() {
  timer = null;
  if (!db || !queue.length) return;
  const batch = queue;
  queue = [];
  let counts = 0;
  try {
    db.transaction(() => {
      for (const w of batch) {
        if (w.op === 'start') {
          sessions.set(w.key, db!.startSession({ pid: w.pid, source: 'attach', name: w.name, started: w.started, attached: w.attached }));
          continue;
        }
        const session = sessions.get(w.key);
        if (session === undefined) continue;
        if (w.op === 'counts') {
          db!.addCounts(session, storedCounts(w.frame));
          counts++;
        } else if (w.op === 'tokens') db!.addTokens(session, w.ts, w.frame);
        else if (w.op === 'layers') db!.setLayers(session, w.model, w.layers);
        else if (w.op === 'anomaly') db!.addAnomaly(session, w.model, w.anomaly);
        else if (w.op === 'end') {
          db!.endSession(session, w.ended);
          sessions.delete(w.key);
        }
      }
    });
  } catch (err) {
    const error = describe(err);
    post({ op: 'failed', error });
    if (error.code === 'corrupt') {
      // stop writing to a damaged file at once
      db.close();
      db = null;
    }
  }
  if (db && Date.now() - lastRetention > RETENTION_EVERY_MS) retain();
  post({ op: 'written', counts: counts || batch.filter((w) => w.op === 'counts').length, fileBytes: db?.fileBytes() ?? 0 });
}

function retain() {
  lastRetention = Date.now();
  try {
    db?.enforceRetention(policy);
  } catch (err) {
    post({ op: 'failed', error: describe(err) });
  }
}

function reply(id: number, run: () => unknown) {
  if (!db) {
    post({ op: 'reply', id, error: { code: 'io', message: 'The history database is not open.', hint: '' } });
    return;
  }
  flush(); // a read sees every write made before it
  try {
    post({ op: 'reply', id, result: run() });
  } catch (err) {
    post({ op: 'reply', id, error: describe(err) });
  }
}

port.on('message', (m: ToWorker) => {
  switch (m.op) {
    case 'open':
      policy = m.policy;
      try {
        db = HistoryDatabase.open(m.file);
        retain();
        post({ op: 'opened', fileBytes: db.fileBytes() });
      } catch (err) {
        post({ op: 'failed', error: describe(err) });
      }
      return;
    case 'policy':
      policy = m.policy;
      retain();
      return;
    case 'list':
      return reply(m.id, () => db!.listSessions());
    case 'delete':
      return reply(m.id, () => db!.deleteSession(m.session));
    case 'import':
      return reply(m.id, () => {
        const rec = parseRecording(m.text);
        return importMessages(db!, m.name, rec.header, rec.messages);
      });
    case 'read':
      return reply(m.id, () => {
        const contents = db!.readSession(m.session, m.options);
        // in parts of about partBytes of JSON each, so the host can relay them as they come
        let part: HostMessage[] = [];
        let size = 0;
        let first = true;
        const send = () => {
          post({ op: 'part', id: m.id, messages: part, first, ...(first ? { info: contents.info, available: contents.available } : {}) });
          first = false;
          part = [];
          size = 0;
        };
        for (const msg of contents.messages) {
          const bytes = JSON.stringify(msg).length;
          if (size + bytes > m.partBytes && part.length) send();
          part.push(msg);
          size += bytes;
        }
        send();
        return null;
      });
    case 'close':
      flush();
      db?.close();
      db = null;
      post({ op: 'closed' });
      return;
    default:
      if (!db) return; // history is off (the file was refused): writes go nowhere
      queue.push(m);
      if (queue.length >= 256) flush();
      else timer ??= setTimeout(flush, WRITE_BATCH_MS);
  }
});
