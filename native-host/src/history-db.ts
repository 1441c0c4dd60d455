/**
 * The persistent history: every attached job's snapshots (counts, router health, time per layer),
 * sampled per-token routing, layer descriptions and anomaly findings, in one SQLite database file
 * under the user's data folder (paths.ts), so that a session can be listed and reopened days later.
 *
 * Why SQLite (through node-sqlite3-wasm, SQLite compiled to WebAssembly with a Node file-system
 * layer): every DevTools window starts its own host process, and several may write at once;
 * SQLite coordinates processes on one file (DuckDB admits one writing process per file). The
 * package is plain JavaScript and WebAssembly, so `npm install` needs nothing but the npm registry
 * (no native build, no download from GitHub at install time, unlike better-sqlite3 or the duckdb
 * addons). The time series are append-only chains of compact snapshots (history-codec.ts) keyed by
 * (session, model, seq) with the probe's timestamp beside them, so a time range is an index range
 * and a long range is down-sampled by reading every n-th key snapshot only.
 *
 * Safety: a file that is not a database, is damaged, or was written by a newer version of this
 * schema is refused with a HistoryDbError that says which and what to do; it is never written to.
 * node-sqlite3-wasm locks the file with a lock directory (FILE.lock) held for the length of a
 * transaction; a process killed inside one leaves it behind, so a lock older than STALE_LOCK_MS
 * (far longer than any transaction here, all of which are short) is removed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { Packr, Unpackr } from 'msgpackr';
import type { HistorySession, HostMessage, JobUpdate, TokenUpdate } from '../../src/protocol/panel';
import type { LayerInfo, ModelInfo, ProbeTokens } from '../../src/protocol/probe';
import type { Anomaly } from '../../src/analysis/anomaly';
import { decodeSnapshot, encodeSnapshot, KEY_INTERVAL, type SnapshotValues } from './history-codec';

export const HISTORY_FORMAT = 'moe-devtools-history';
export const HISTORY_SCHEMA = 1;
const STALE_LOCK_MS = 60_000;
/** Below this size a database is checked whole at open (PRAGMA quick_check); larger ones are checked as they are read. */
const QUICK_CHECK_BYTES = 256 * 1024 * 1024;

export type HistoryDbErrorCode = 'corrupt' | 'newer' | 'foreign' | 'io';

export class HistoryDbError extends Error {
  constructor(readonly code: HistoryDbErrorCode, message: string, readonly hint: string) {
    super(message);
    this.name = 'HistoryDbError';
  }
}

/** One session as the History view lists it (the protocol's HistorySession). */
export type SessionInfo = HistorySession;

/** A counts snapshot as the writer gets it: the values plus the scalars stored beside them. */
export interface StoredCounts {
  model: number;
  ts: number;
  passes: number;
  widths: number[];
  values: SnapshotValues;
  dropped: number;
  probeS?: number;
  prefill?: number;
  decode?: number;
  shape?: number[];
  droppedTokens?: number;
}

export interface ReadOptions {
  /** Probe-clock range, s since the epoch (default: the whole session). */
  from?: number;
  to?: number;
  /** Most snapshots per model to return, evenly spread over the range (default: all). */
  points?: number;
}

/** A session read back: the messages that show it in the panel, with its pid. */
export interface SessionContents {
  info: SessionInfo;
  /** 'attached' first, then 'layers', then updates and token records in time order, then anomalies. */
  messages: HostMessage[];
  /** Snapshots in the range before down-sampling, per model. */
  available: number;
}

export interface RetentionPolicy {
  /** Most bytes the database file may use (pages in use). */
  maxBytes: number;
  /** Sessions that ended longer ago than this are removed. */
  maxAgeMs: number;
}

export interface RetentionResult {
  removedSessions: number[];
  trimmedSnapshots: number;
}

type Sqlite = typeof import('node-sqlite3-wasm');
type Database = InstanceType<Sqlite['Database']>;

let sqliteModule: Sqlite | null = null;
/** Loaded on first use: compiling SQLite's WebAssembly takes a moment the command line should not pay for nothing. */
function sqlite(): Sqlite {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  sqliteModule ??= require('node-sqlite3-wasm') as Sqlite;
  return sqliteModule;
}

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

const SCHEMA = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
  id INTEGER PRIMARY KEY,
  pid INTEGER NOT NULL,
  source TEXT NOT NULL,
  name TEXT NOT NULL,
  model_class TEXT NOT NULL DEFAULT '',
  model_type TEXT NOT NULL DEFAULT '',
  layers INTEGER NOT NULL DEFAULT 0,
  experts INTEGER NOT NULL DEFAULT 0,
  started REAL NOT NULL,
  ended REAL,
  host_pid INTEGER,
  first_ts REAL,
  last_ts REAL,
  passes INTEGER NOT NULL DEFAULT 0,
  snapshots INTEGER NOT NULL DEFAULT 0,
  token_passes INTEGER NOT NULL DEFAULT 0,
  anomalies INTEGER NOT NULL DEFAULT 0,
  bytes INTEGER NOT NULL DEFAULT 0,
  attached TEXT NOT NULL
);
CREATE TABLE models (
  session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  model INTEGER NOT NULL,
  widths TEXT NOT NULL,
  layers TEXT,
  PRIMARY KEY (session, model)
);
CREATE TABLE snapshots (
  id INTEGER PRIMARY KEY,
  session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  model INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  ts REAL NOT NULL,
  passes INTEGER NOT NULL,
  key INTEGER NOT NULL,
  meta TEXT NOT NULL,
  data BLOB NOT NULL
);
CREATE UNIQUE INDEX snapshots_seq ON snapshots (session, model, seq);
CREATE INDEX snapshots_ts ON snapshots (session, model, ts);
CREATE TABLE tokens (
  id INTEGER PRIMARY KEY,
  session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  model INTEGER NOT NULL,
  pass INTEGER NOT NULL,
  ts REAL NOT NULL,
  data BLOB NOT NULL
);
CREATE INDEX tokens_ts ON tokens (session, model, ts);
CREATE TABLE anomalies (
  id INTEGER PRIMARY KEY,
  session INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  model INTEGER NOT NULL,
  ts REAL NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX anomalies_session ON anomalies (session, ts);
`;

/** What the writer keeps per (session, model) to chain the next snapshot onto. */
interface Chain {
  seq: number;
  sinceKey: number;
  prev: SnapshotValues | null;
}

/** Whether process `pid` is alive (a session whose host died is closed at the next open). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function removeStaleLock(file: string) {
  const lock = `${file}.lock`;
  try {
    if (Date.now() - fs.statSync(lock).mtimeMs > STALE_LOCK_MS) fs.rmdirSync(lock);
  } catch {
    // no lock, or another process just took or released it
  }
}

const isCorruption = (message: string) => /malformed|not a database|corrupt|file is encrypted/i.test(message);

export class HistoryDatabase {
  private chains = new Map<string, Chain>();
  private insertSnapshot: ReturnType<Database['prepare']>;

  private constructor(private readonly db: Database, readonly file: string) {
    this.insertSnapshot = db.prepare('INSERT INTO snapshots (session, model, seq, ts, passes, key, meta, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
  }

  /** Open (or create) the database at `file`. Throws HistoryDbError when the file is not ours, damaged or newer. */
  static open(file: string): HistoryDatabase {
    const exists = fs.existsSync(file) && fs.statSync(file).size > 0;
    if (!exists) fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    removeStaleLock(file);
    let db: Database;
    try {
      db = new (sqlite().Database)(file);
    } catch (err) {
      throw new HistoryDbError('io', `Cannot open the history database ${file}: ${(err as Error).message}.`,
        'Check that its folder exists and is writable, or set MOE_DEVTOOLS_DB to another file (or to "off").');
    }
    try {
      db.exec('PRAGMA busy_timeout = 5000');
      db.exec('PRAGMA foreign_keys = ON');
      if (!exists) {
        // auto_vacuum must be chosen before the first table: it lets retention give space back to the disk
        db.exec('PRAGMA auto_vacuum = INCREMENTAL');
        db.exec(`BEGIN; ${SCHEMA}; INSERT INTO meta VALUES ('format', '${HISTORY_FORMAT}'), ('schema', '${HISTORY_SCHEMA}'); COMMIT;`);
      } else {
        HistoryDatabase.check(db, file);
      }
      db.exec('PRAGMA journal_mode = TRUNCATE');
      db.exec('PRAGMA synchronous = NORMAL');
    } catch (err) {
      try {
        db.close();
      } catch {
        // closing a damaged file can fail too
      }
      if (err instanceof HistoryDbError) throw err;
      const message = (err as Error).message;
      if (isCorruption(message)) throw HistoryDatabase.corrupt(file, message);
      throw new HistoryDbError('io', `Cannot use the history database ${file}: ${message}.`, 'Set MOE_DEVTOOLS_DB to another file, or to "off".');
    }
    const store = new HistoryDatabase(db, file);
    store.closeOrphans();
    return store;
  }

  static corrupt(file: string, detail: string): HistoryDbError {
    return new HistoryDbError('corrupt', `The history database ${file} is damaged (${detail}); it was left as it is and history is off.`,
      `Move it aside (e.g. mv "${file}" "${file}.damaged") to start a new history, or set MOE_DEVTOOLS_DB to another file.`);
  }

  /** Refuse a file that is not ours, is damaged, or was written by a newer schema. */
  private static check(db: Database, file: string) {
    let rows: Array<Record<string, unknown>>;
    try {
      rows = db.all("SELECT key, value FROM meta WHERE key IN ('format', 'schema')") as Array<Record<string, unknown>>;
    } catch (err) {
      const message = (err as Error).message;
      if (isCorruption(message)) throw HistoryDatabase.corrupt(file, message);
      throw new HistoryDbError('foreign', `${file} is an SQLite database but not a MoE DevTools history (${message}); it was left as it is and history is off.`,
        'Set MOE_DEVTOOLS_DB to another file for the history.');
    }
    const meta = Object.fromEntries(rows.map((r) => [r.key, r.value]));
    if (meta.format !== HISTORY_FORMAT) {
      throw new HistoryDbError('foreign', `${file} is not a MoE DevTools history database; it was left as it is and history is off.`,
        'Set MOE_DEVTOOLS_DB to another file for the history.');
    }
    const schema = Number(meta.schema);
    if (!(schema >= 1)) throw HistoryDatabase.corrupt(file, 'its schema version is missing');
    if (schema > HISTORY_SCHEMA) {
      throw new HistoryDbError('newer', `The history database ${file} was written by a newer MoE DevTools (schema ${schema}; this one reads up to ${HISTORY_SCHEMA}); it was left as it is and history is off.`,
        'Update MoE DevTools (git pull && npm install && npm run build), or set MOE_DEVTOOLS_DB to another file for this version.');
    }
    if (fs.statSync(file).size <= QUICK_CHECK_BYTES) {
      const result = db.all('PRAGMA quick_check(1)') as Array<Record<string, unknown>>;
      const text = String(Object.values(result[0] ?? {})[0] ?? '');
      if (text !== 'ok') throw HistoryDatabase.corrupt(file, text || 'quick_check failed');
    }
  }

  /** Sessions left open by a host that is gone (killed, or the machine restarted) end at their last snapshot. */
  private closeOrphans() {
    const open = this.db.all('SELECT id, host_pid, last_ts, started FROM sessions WHERE ended IS NULL') as Array<Record<string, number | null>>;
    for (const s of open) {
      if (s.host_pid && s.host_pid !== process.pid && alive(s.host_pid)) continue;
      const ended = s.last_ts ? s.last_ts * 1000 : (s.started as number);
      this.db.run('UPDATE sessions SET ended = ? WHERE id = ?', [ended, s.id as number]);
    }
  }

  /** Run `fn` in one transaction (one lock and one sync for many inserts). */
  transaction<T>(fn: () => T): T {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const out = fn();
      this.db.exec('COMMIT');
      return out;
    } catch (err) {
      try {
        this.db.exec('ROLLBACK');
      } catch {
        // already rolled back
      }
      throw err;
    }
  }

  /** A new session for an attached job (or an imported recording); returns its id. */
  startSession(s: { pid: number; source: 'attach' | 'import'; name: string; started: number; attached: Extract<HostMessage, { type: 'attached' }> }): number {
    const model = s.attached.models[0];
    const res = this.db.run(
      'INSERT INTO sessions (pid, source, name, model_class, model_type, layers, experts, started, host_pid, attached) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [s.pid, s.source, s.name, model?.class ?? '', model?.model_type ?? '', model?.layers.length ?? 0, model?.layers.reduce((a, l) => a + l.experts, 0) ?? 0,
        s.started, s.source === 'attach' ? process.pid : null, JSON.stringify(s.attached)],
    );
    const id = Number(res.lastInsertRowid);
    for (const m of s.attached.models) this.setModel(id, m.id, m.layers.map((l) => l.experts), m.layers);
    return id;
  }

  private setModel(session: number, model: number, widths: number[], layers: LayerInfo[] | null) {
    this.db.run('INSERT INTO models (session, model, widths, layers) VALUES (?, ?, ?, ?) ON CONFLICT (session, model) DO UPDATE SET widths = excluded.widths, layers = COALESCE(excluded.layers, models.layers)',
      [session, model, JSON.stringify(widths), layers ? JSON.stringify(layers) : null]);
  }

  /** The model's layers as the probe now describes them. */
  setLayers(session: number, model: number, layers: LayerInfo[]) {
    this.setModel(session, model, layers.map((l) => l.experts), layers);
  }

  addCounts(session: number, c: StoredCounts) {
    const chainKey = `${session}/${c.model}`;
    let chain = this.chains.get(chainKey);
    if (!chain) {
      const last = this.db.get('SELECT MAX(seq) AS seq FROM snapshots WHERE session = ? AND model = ?', [session, c.model]) as { seq: number | null } | null;
      chain = { seq: (last?.seq ?? -1) + 1, sinceKey: KEY_INTERVAL, prev: null };
      this.chains.set(chainKey, chain);
      this.setModel(session, c.model, c.widths, null);
    }
    const key = chain.prev === null || chain.sinceKey >= KEY_INTERVAL || chain.prev.counts.length !== c.values.counts.length;
    const data = encodeSnapshot(c.values, key ? null : chain.prev);
    const meta = JSON.stringify({
      widths: c.widths, dropped: c.dropped, probeS: c.probeS, prefill: c.prefill, decode: c.decode, shape: c.shape, droppedTokens: c.droppedTokens,
    });
    this.insertSnapshot.run([session, c.model, chain.seq, c.ts, c.passes, key ? 1 : 0, meta, data]);
    chain.seq += 1;
    chain.sinceKey = key ? 1 : chain.sinceKey + 1;
    chain.prev = c.values;
    this.db.run(
      `UPDATE sessions SET snapshots = snapshots + 1, bytes = bytes + ?, passes = MAX(passes, ?), last_ts = ?,
         first_ts = COALESCE(first_ts, ?) WHERE id = ?`,
      [data.length + meta.length, c.passes, c.ts, c.ts, session],
    );
  }

  addTokens(session: number, ts: number, frame: ProbeTokens) {
    const data = zlib.deflateRawSync(packr.pack({
      pass: frame.pass, phase: frame.phase, n: frame.n, k: frame.k, token_ids: frame.token_ids, texts: frame.texts,
      layers: frame.layers.map((l) => ({ layer: l.layer, n: l.n, k: l.k, ids: l.ids, weights: l.weights })),
    }), { level: 1 });
    this.db.run('INSERT INTO tokens (session, model, pass, ts, data) VALUES (?, ?, ?, ?, ?)', [session, frame.model, frame.pass, ts, data]);
    this.db.run('UPDATE sessions SET token_passes = token_passes + 1, bytes = bytes + ? WHERE id = ?', [data.length, session]);
  }

  addAnomaly(session: number, model: number, anomaly: Anomaly) {
    this.db.run('INSERT INTO anomalies (session, model, ts, data) VALUES (?, ?, ?, ?)', [session, model, anomaly.ts, JSON.stringify(anomaly)]);
    this.db.run('UPDATE sessions SET anomalies = anomalies + 1 WHERE id = ?', [session]);
  }

  endSession(session: number, ended: number) {
    this.db.run('UPDATE sessions SET ended = ? WHERE id = ?', [ended, session]);
    for (const key of [...this.chains.keys()]) if (key.startsWith(`${session}/`)) this.chains.delete(key);
  }

  listSessions(): SessionInfo[] {
    const rows = this.db.all('SELECT * FROM sessions ORDER BY started DESC, id DESC') as Array<Record<string, unknown>>;
    return rows.map(sessionInfo);
  }

  session(id: number): SessionInfo | null {
    const row = this.db.get('SELECT * FROM sessions WHERE id = ?', [id]) as Record<string, unknown> | null;
    return row ? sessionInfo(row) : null;
  }

  /**
   * A session's messages over [from, to], snapshots down-sampled to `points` per model: whole
   * cumulative snapshots picked evenly by time (the first and last of the range always), so every
   * window the panel computes from them is exact, only coarser in time. Key snapshots are preferred
   * when the stride allows, so a long range decodes a few payloads per point at most.
   */
  readSession(id: number, opts: ReadOptions = {}): SessionContents {
    const row = this.db.get('SELECT * FROM sessions WHERE id = ?', [id]) as Record<string, unknown> | null;
    if (!row) throw new HistoryDbError('io', `There is no session ${id} in the history (it may have been removed by retention).`, 'Refresh the History list.');
    const info = sessionInfo(row);
    const attached = JSON.parse(row.attached as string) as Extract<HostMessage, { type: 'attached' }>;
    const from = opts.from ?? -Infinity;
    const to = opts.to ?? Infinity;
    const messages: HostMessage[] = [attached];
    const models = this.db.all('SELECT model, widths, layers FROM models WHERE session = ? ORDER BY model', [id]) as Array<Record<string, string | number | null>>;
    for (const m of models) {
      if (m.layers) messages.push({ type: 'layers', pid: info.pid, model: m.model as number, layers: JSON.parse(m.layers as string) });
    }
    const timeline: Array<{ ts: number; order: number; message: HostMessage }> = [];
    let available = 0;
    for (const m of models) {
      const model = m.model as number;
      const picked = this.pickSnapshots(id, model, from, to, opts.points);
      available = Math.max(available, picked.available);
      for (const u of this.decodeSnapshots(id, model, info.pid, picked.seqs)) timeline.push({ ts: u.ts, order: 0, message: u });
    }
    const tokenRows = this.db.all('SELECT ts, model, data FROM tokens WHERE session = ? AND ts >= ? AND ts <= ? ORDER BY ts, id',
      [id, finite(from, -1e300), finite(to, 1e300)]) as Array<{ ts: number; model: number; data: Uint8Array }>;
    for (const t of tokenRows) timeline.push({ ts: t.ts, order: 1, message: tokenMessage(info.pid, t.model, t.data) });
    timeline.sort((a, b) => a.ts - b.ts || a.order - b.order);
    for (const t of timeline) messages.push(t.message);
    const anomalies = this.db.all('SELECT model, data FROM anomalies WHERE session = ? AND ts >= ? AND ts <= ? ORDER BY ts, id',
      [id, finite(from, -1e300), finite(to, 1e300)]) as Array<{ model: number; data: string }>;
    for (const a of anomalies) messages.push({ type: 'anomaly', pid: info.pid, model: a.model, anomaly: JSON.parse(a.data) });
    return { info, messages, available };
  }

  /** Every snapshot of a model in a range, in order, at full resolution (for export). */
  *iterateUpdates(id: number, model: number, pid: number, from = -Infinity, to = Infinity, batch = 256): Generator<JobUpdate> {
    const seqs = (this.db.all('SELECT seq FROM snapshots WHERE session = ? AND model = ? AND ts >= ? AND ts <= ? ORDER BY seq',
      [id, model, finite(from, -1e300), finite(to, 1e300)]) as Array<{ seq: number }>).map((r) => r.seq);
    for (let i = 0; i < seqs.length; i += batch) yield* this.decodeSnapshots(id, model, pid, seqs.slice(i, i + batch));
  }

  /** Which snapshots to return: all in range, or `points` of them spread evenly by time. */
  private pickSnapshots(id: number, model: number, from: number, to: number, points?: number): { seqs: number[]; available: number } {
    const rows = this.db.all('SELECT seq, ts, key FROM snapshots WHERE session = ? AND model = ? AND ts >= ? AND ts <= ? ORDER BY seq',
      [id, model, finite(from, -1e300), finite(to, 1e300)]) as Array<{ seq: number; ts: number; key: number }>;
    if (!points || rows.length <= points) return { seqs: rows.map((r) => r.seq), available: rows.length };
    const first = rows[0]!;
    const last = rows[rows.length - 1]!;
    const picked = new Set<number>([first.seq, last.seq]);
    const span = last.ts - first.ts;
    const stride = rows.length / points;
    let j = 0;
    for (let p = 1; p < points - 1; p++) {
      const target = first.ts + (span * p) / (points - 1);
      while (j + 1 < rows.length && rows[j + 1]!.ts <= target) j++;
      // a key snapshot near the target when the stride is wide enough to leave room for one
      let best = j;
      if (stride >= 2) {
        for (let d = 0; d < Math.min(KEY_INTERVAL, stride / 2); d++) {
          if (rows[j + d]?.key) {
            best = j + d;
            break;
          }
          if (rows[j - d]?.key) {
            best = j - d;
            break;
          }
        }
      }
      picked.add(rows[best]!.seq);
    }
    return { seqs: [...picked].sort((a, b) => a - b), available: rows.length };
  }

  /** Decode the given snapshots (ascending seq) into panel updates, each from the key before it. */
  private decodeSnapshots(id: number, model: number, pid: number, seqs: number[]): JobUpdate[] {
    const out: JobUpdate[] = [];
    let i = 0;
    const select = this.db.prepare('SELECT seq, ts, passes, key, meta, data FROM snapshots WHERE session = ? AND model = ? AND seq >= ? AND seq <= ? ORDER BY seq');
    const keyBefore = this.db.prepare('SELECT MAX(seq) AS seq FROM snapshots WHERE session = ? AND model = ? AND seq <= ? AND key = 1');
    try {
      while (i < seqs.length) {
        const target = seqs[i]!;
        const start = (keyBefore.get([id, model, target]) as { seq: number | null } | null)?.seq;
        if (start === null || start === undefined) throw HistoryDatabase.corrupt(this.file, `snapshot ${target} of session ${id} has no key snapshot before it`);
        // decode forward from the key through every wanted seq that this run reaches before the next key
        let end = target;
        while (i + 1 < seqs.length && seqs[i + 1]! - start < 2 * KEY_INTERVAL && seqs[i + 1]! <= end + KEY_INTERVAL) end = seqs[++i]!;
        i++;
        let prev: SnapshotValues | null = null;
        const want = new Set(seqs.filter((s) => s >= start && s <= end));
        for (const r of select.iterate([id, model, start, end]) as Iterable<Record<string, unknown>>) {
          prev = decodeSnapshot(r.data as Uint8Array, r.key ? null : prev);
          if (want.has(r.seq as number)) out.push(toUpdate(pid, model, r, prev));
        }
      }
    } catch (err) {
      if (err instanceof HistoryDbError) throw err;
      const message = (err as Error).message;
      if (isCorruption(message) || (err as Error).name === 'CodecError') throw HistoryDatabase.corrupt(this.file, message);
      throw err;
    } finally {
      select.finalize();
      keyBefore.finalize();
    }
    return out;
  }

  deleteSession(id: number) {
    this.transaction(() => {
      this.db.run('DELETE FROM snapshots WHERE session = ?', [id]);
      this.db.run('DELETE FROM tokens WHERE session = ?', [id]);
      this.db.run('DELETE FROM anomalies WHERE session = ?', [id]);
      this.db.run('DELETE FROM models WHERE session = ?', [id]);
      this.db.run('DELETE FROM sessions WHERE id = ?', [id]);
    });
    for (const key of [...this.chains.keys()]) if (key.startsWith(`${id}/`)) this.chains.delete(key);
  }

  /** Bytes of the file in use (pages not on the free list). */
  usedBytes(): number {
    const page = (this.db.get('PRAGMA page_size') as Record<string, number>).page_size!;
    const count = (this.db.get('PRAGMA page_count') as Record<string, number>).page_count!;
    const free = (this.db.get('PRAGMA freelist_count') as Record<string, number>).freelist_count!;
    return (count - free) * page;
  }

  fileBytes(): number {
    try {
      return fs.statSync(this.file).size;
    } catch {
      return 0;
    }
  }

  /**
   * Retention: sessions that ended more than maxAgeMs ago go; then, while the file uses more than
   * maxBytes, the oldest finished sessions go, oldest first; should the sessions still being
   * recorded alone be over the cap, the oldest part of the oldest of them is trimmed (from a key
   * snapshot on, so what remains decodes). Freed pages are given back to the disk.
   */
  enforceRetention(policy: RetentionPolicy, now = Date.now()): RetentionResult {
    const result: RetentionResult = { removedSessions: [], trimmedSnapshots: 0 };
    const old = this.db.all('SELECT id FROM sessions WHERE ended IS NOT NULL AND ended < ? ORDER BY started', [now - policy.maxAgeMs]) as Array<{ id: number }>;
    for (const { id } of old) {
      this.deleteSession(id);
      result.removedSessions.push(id);
    }
    while (this.usedBytes() > policy.maxBytes) {
      const oldest = this.db.get('SELECT id FROM sessions WHERE ended IS NOT NULL ORDER BY started, id LIMIT 1') as { id: number } | null;
      if (oldest) {
        this.deleteSession(oldest.id);
        result.removedSessions.push(oldest.id);
        continue;
      }
      const trimmed = this.trimOldestLive();
      if (!trimmed) break;
      result.trimmedSnapshots += trimmed;
    }
    if (result.removedSessions.length || result.trimmedSnapshots) this.db.exec('PRAGMA incremental_vacuum');
    return result;
  }

  /** Drop the oldest tenth of the oldest live session's snapshots, up to a key snapshot. Returns how many went. */
  private trimOldestLive(): number {
    const live = this.db.get('SELECT id, snapshots FROM sessions WHERE ended IS NULL ORDER BY started, id LIMIT 1') as { id: number; snapshots: number } | null;
    if (!live || live.snapshots < 2 * KEY_INTERVAL) return 0;
    let removed = 0;
    const models = this.db.all('SELECT DISTINCT model FROM snapshots WHERE session = ?', [live.id]) as Array<{ model: number }>;
    this.transaction(() => {
      for (const { model } of models) {
        const range = this.db.get('SELECT MIN(seq) AS lo, MAX(seq) AS hi FROM snapshots WHERE session = ? AND model = ?', [live.id, model]) as { lo: number; hi: number };
        const cut = range.lo + Math.max(KEY_INTERVAL, Math.floor((range.hi - range.lo) / 10));
        const key = this.db.get('SELECT MIN(seq) AS seq FROM snapshots WHERE session = ? AND model = ? AND key = 1 AND seq >= ?', [live.id, model, cut]) as { seq: number | null };
        if (key.seq === null) continue;
        const gone = this.db.get('SELECT COUNT(*) AS n, COALESCE(SUM(LENGTH(data) + LENGTH(meta)), 0) AS bytes FROM snapshots WHERE session = ? AND model = ? AND seq < ?', [live.id, model, key.seq]) as { n: number; bytes: number };
        this.db.run('DELETE FROM snapshots WHERE session = ? AND model = ? AND seq < ?', [live.id, model, key.seq]);
        const first = this.db.get('SELECT MIN(ts) AS ts FROM snapshots WHERE session = ?', [live.id]) as { ts: number };
        this.db.run('UPDATE sessions SET snapshots = snapshots - ?, bytes = bytes - ?, first_ts = ? WHERE id = ?', [gone.n, gone.bytes, first.ts, live.id]);
        this.db.run('DELETE FROM tokens WHERE session = ? AND ts < ?', [live.id, first.ts]);
        removed += gone.n;
      }
    });
    return removed;
  }

  close() {
    try {
      this.insertSnapshot.finalize();
    } catch {
      // already finalized
    }
    this.db.close();
  }
}

const finite = (x: number, fallback: number) => (Number.isFinite(x) ? x : fallback);

function sessionInfo(r: Record<string, unknown>): SessionInfo {
  return {
    id: r.id as number, pid: r.pid as number, source: r.source as 'attach' | 'import', name: r.name as string,
    modelClass: r.model_class as string, modelType: r.model_type as string, layers: r.layers as number, experts: r.experts as number,
    started: r.started as number, ended: (r.ended as number | null) ?? null,
    firstTs: (r.first_ts as number | null) ?? null, lastTs: (r.last_ts as number | null) ?? null,
    passes: r.passes as number, snapshots: r.snapshots as number, tokenPasses: r.token_passes as number,
    anomalies: r.anomalies as number, bytes: r.bytes as number,
  };
}

function toUpdate(pid: number, model: number, r: Record<string, unknown>, v: SnapshotValues): JobUpdate {
  const meta = JSON.parse(r.meta as string) as Record<string, unknown>;
  const widths = meta.widths as number[];
  const u: JobUpdate = {
    type: 'update', pid, model, passes: r.passes as number, layers: widths.length, widths,
    counts: Array.from(v.counts), ts: r.ts as number, dropped: (meta.dropped as number) ?? 0,
  };
  if (v.tokens) u.tokens = Array.from(v.tokens);
  if (v.health) u.health = Array.from(v.health);
  if (v.maxLogit) u.maxLogit = Array.from(v.maxLogit);
  if (v.timeS) u.timeS = Array.from(v.timeS);
  for (const k of ['probeS', 'prefill', 'decode', 'droppedTokens'] as const) if (typeof meta[k] === 'number') u[k] = meta[k] as number;
  if (Array.isArray(meta.shape)) u.shape = meta.shape as number[];
  return u;
}

const round4 = (x: number) => Math.round(x * 1e4) / 1e4;
const int32s = (b: Uint8Array | null | undefined) => (b ? Array.from(new Int32Array(Uint8Array.from(b).buffer)) : null);
const float32s = (b: Uint8Array | null | undefined) => (b ? Array.from(new Float32Array(Uint8Array.from(b).buffer), round4) : null);

function tokenMessage(pid: number, model: number, data: Uint8Array): TokenUpdate {
  const f = unpackr.unpack(zlib.inflateRawSync(data)) as {
    pass: number; phase: 'prefill' | 'decode'; token_ids: Uint8Array | null; texts: string[] | null;
    layers: Array<{ layer: number; n: number; k: number; ids: Uint8Array; weights: Uint8Array | null }>;
  };
  return {
    type: 'tokens', pid, model, pass: f.pass, phase: f.phase, tokenIds: int32s(f.token_ids), texts: f.texts ?? null,
    layers: f.layers.map((l) => ({ layer: l.layer, n: l.n, k: l.k, ids: int32s(l.ids)!, weights: float32s(l.weights) })),
  };
}

/** The model infos a session's attached message names (for writers that need widths). */
export function attachedModels(message: HostMessage): ModelInfo[] {
  return message.type === 'attached' ? message.models : [];
}

/** A panel update as the writer stores it. */
export function storedFromUpdate(u: JobUpdate): StoredCounts {
  const f64 = (a: number[] | undefined) => (a ? Float64Array.from(a) : null);
  return {
    model: u.model, ts: u.ts, passes: u.passes, widths: u.widths, dropped: u.dropped,
    values: { counts: Float64Array.from(u.counts), tokens: f64(u.tokens), health: f64(u.health), maxLogit: f64(u.maxLogit), timeS: f64(u.timeS) },
    ...(u.probeS !== undefined ? { probeS: u.probeS } : {}), ...(u.prefill !== undefined ? { prefill: u.prefill } : {}),
    ...(u.decode !== undefined ? { decode: u.decode } : {}), ...(u.shape ? { shape: u.shape } : {}),
    ...(u.droppedTokens !== undefined ? { droppedTokens: u.droppedTokens } : {}),
  };
}

/** A panel token update in the probe's binary form (what addTokens stores). */
export function probeTokensFromUpdate(t: TokenUpdate): ProbeTokens {
  const bytes = (a: ArrayLike<number>, T: Int32ArrayConstructor | Float32ArrayConstructor) => new Uint8Array(T.from(a).buffer);
  const k = t.layers[0]?.k ?? 0;
  return {
    t: 'tokens', model: t.model, pass: t.pass, phase: t.phase, n: Math.max(0, ...t.layers.map((l) => l.n)), k,
    token_ids: t.tokenIds ? bytes(t.tokenIds, Int32Array) : null, texts: t.texts,
    layers: t.layers.map((l) => ({ layer: l.layer, n: l.n, k: l.k, ids: bytes(l.ids, Int32Array), weights: l.weights ? bytes(l.weights, Float32Array) : null })),
  };
}

/**
 * Store the messages of a recording (already parsed and checked, panels/engine/recording.ts) as a
 * new session named after its file. Token records carry no time of their own: each gets the time
 * of the update before it. Returns the session id.
 */
export function importMessages(db: HistoryDatabase, name: string, header: { pid: number; started: number }, messages: HostMessage[]): number {
  let attachedMsg = messages.find((m): m is Extract<HostMessage, { type: 'attached' }> => m.type === 'attached');
  if (!attachedMsg) {
    // a recording without its attach message: describe the model from its first update
    const u = messages.find((m): m is JobUpdate => m.type === 'update')!;
    attachedMsg = {
      type: 'attached', pid: header.pid, method: 'socket', ms: 0, python: '', framework: '', frameworkVersion: '', argv: [],
      models: [{ id: u.model, class: 'Recorded model', model_type: '', device: '', dtype: '', layers: u.widths.map((w, i) => ({
        index: i, name: `layer ${i}`, arch: '', experts: w, top_k: 1, model_index: i, stack: '', kind: 'mlp', design: 'top-k',
        source: 'router', token_source: 'router', identity_experts: 0, shared_experts: 0, gating: '',
      })) }],
    };
  }
  return db.transaction(() => {
    const id = db.startSession({ pid: header.pid, source: 'import', name, started: header.started, attached: attachedMsg! });
    let ts = NaN;
    let lastTs = NaN;
    for (const m of messages) {
      if (m.type === 'update') {
        db.addCounts(id, storedFromUpdate(m));
        ts = m.ts;
        lastTs = m.ts;
      } else if (m.type === 'tokens') {
        db.addTokens(id, Number.isFinite(ts) ? ts : 0, probeTokensFromUpdate(m));
      } else if (m.type === 'layers') {
        db.setLayers(id, m.model, m.layers);
      } else if (m.type === 'anomaly') {
        db.addAnomaly(id, m.model, m.anomaly);
      }
    }
    db.endSession(id, Number.isFinite(lastTs) ? lastTs * 1000 : header.started);
    return id;
  });
}
