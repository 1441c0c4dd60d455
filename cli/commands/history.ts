/**
 * `moe-devtools history ...`: the host's history database from the command line (the same file the
 * panel's History view shows, native-host/src/history-db.ts): list its sessions, export one (or a
 * time range of one) as a .moerec that `report`, `export` and the panel read, import a .moerec,
 * delete a session. It opens the database directly; a damaged, foreign or newer file is refused
 * with the same message the panel gives, and is left as it is.
 */
import * as fs from 'node:fs';
import type { HostMessage } from '../../src/protocol/panel';
import { fmtInt } from '../../src/analysis';
import { historyDbPath } from '../../native-host/src/paths';
import { HistoryDatabase, HistoryDbError, importMessages, type SessionInfo } from '../../native-host/src/history-db';
import { serializeRecording } from '../../panels/engine/recording';
import { CliError, fsError } from '../errors';
import { prepareFile, readRecording } from '../files';

/** The database file: --db, else where the host keeps it (MOE_DEVTOOLS_DB, else the user's data folder). */
export function databaseFile(db: string | undefined): string {
  if (db) return db;
  const file = historyDbPath(process.env);
  if (!file) throw new CliError('history is off (MOE_DEVTOOLS_DB=off); pass --db FILE to read a history database');
  return file;
}

function open(file: string, mustExist: boolean): HistoryDatabase {
  if (mustExist && !fs.existsSync(file)) throw new CliError(`there is no history database at ${file} (attach to a job from the panel first, or pass --db FILE)`);
  try {
    return HistoryDatabase.open(file);
  } catch (err) {
    if (err instanceof HistoryDbError) throw new CliError(`${err.message} ${err.hint}`);
    throw err;
  }
}

function sessionOrFail(db: HistoryDatabase, id: number): SessionInfo {
  const s = db.session(id);
  if (!s) throw new CliError(`there is no session ${id} in ${db.file} (see \`moe-devtools history list\`)`);
  return s;
}

const when = (ms: number) => new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
const seconds = (s: SessionInfo) => (s.firstTs !== null && s.lastTs !== null ? s.lastTs - s.firstTs : 0);

export function historyList(file: string, json: boolean): string {
  const db = open(file, true);
  try {
    const sessions = db.listSessions();
    if (json) return JSON.stringify({ database: file, fileBytes: db.fileBytes(), sessions }, null, 2);
    if (!sessions.length) return `${file}: no sessions`;
    const rows = sessions.map((s) => [String(s.id), String(s.pid), when(s.started), `${seconds(s).toFixed(1)} s`, fmtInt(s.passes), String(s.anomalies),
      `${(s.bytes / 1e6).toFixed(1)} MB`, s.modelClass || '-', `${s.source === 'import' ? '[imported] ' : s.ended === null ? '[recording] ' : ''}${s.name}`]);
    const head = ['id', 'pid', 'started', 'duration', 'passes', 'anomalies', 'size', 'model', 'job'];
    const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (r: string[]) => r.map((c, i) => (i >= 8 ? c : i === 0 || i === 1 || (i >= 3 && i <= 6) ? c.padStart(width[i]!) : c.padEnd(width[i]!))).join('  ');
    return [`${file}: ${sessions.length} session${sessions.length > 1 ? 's' : ''}, ${(db.fileBytes() / 1e6).toFixed(1)} MB`, line(head), ...rows.map(line)].join('\n');
  } finally {
    db.close();
  }
}

/**
 * Every snapshot of a session (or of [from, to] seconds since its first snapshot) into a .moerec,
 * streamed: the attach message and layers first, then each model's snapshots in order, the
 * sampled token records and the anomalies found.
 */
export function historyExport(file: string, id: number, out: string, force: boolean, from?: number, to?: number): string {
  prepareFile(out, force);
  const db = open(file, true);
  const partial = `${out}.${process.pid}.partial`;
  let fd: number | null = null;
  try {
    const s = sessionOrFail(db, id);
    const t0 = s.firstTs ?? 0;
    const range = { from: from !== undefined ? t0 + from : undefined, to: to !== undefined ? t0 + to : undefined };
    // the session's small messages (attach, layers, tokens, anomalies) without its snapshots
    const head = db.readSession(id, { ...range, points: 2 }).messages.filter((m) => m.type !== 'update');
    const models = (head.find((m) => m.type === 'attached') as Extract<HostMessage, { type: 'attached' }>).models.map((m) => m.id);
    fd = fs.openSync(partial, 'w');
    const write = (line: string) => fs.writeSync(fd!, `${line}\n`);
    write(serializeRecording(s.pid, s.started, []).trimEnd());
    for (const m of head) if (m.type === 'attached' || m.type === 'layers') write(JSON.stringify(m));
    let updates = 0;
    for (const model of models) {
      for (const u of db.iterateUpdates(id, model, s.pid, range.from, range.to)) {
        write(JSON.stringify(u));
        updates++;
      }
    }
    for (const m of head) if (m.type === 'tokens' || m.type === 'anomaly') write(JSON.stringify(m));
    fs.closeSync(fd);
    fd = null;
    if (!updates) throw new CliError(`session ${id} holds no snapshots in that range; nothing was written`);
    fs.renameSync(partial, out);
    return `saved ${out}: session ${id} (process ${s.pid}), ${fmtInt(updates)} snapshots, ${(fs.statSync(out).size / 1e6).toFixed(1)} MB`;
  } catch (err) {
    if (err instanceof HistoryDbError) throw new CliError(`${err.message} ${err.hint}`);
    if (err instanceof CliError) throw err;
    throw fsError('write', out, err);
  } finally {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(partial, { force: true });
    db.close();
  }
}

export function historyImport(file: string, recording: string): string {
  const rec = readRecording(recording);
  const db = open(file, false);
  try {
    const id = importMessages(db, recording.split('/').pop() ?? recording, rec.header, rec.messages);
    const s = db.session(id)!;
    return `imported ${recording} as session ${id}: process ${s.pid}, ${fmtInt(s.snapshots)} snapshots`;
  } finally {
    db.close();
  }
}

export function historyDelete(file: string, id: number): string {
  const db = open(file, true);
  try {
    const s = sessionOrFail(db, id);
    if (s.ended === null) throw new CliError(`session ${id} is still being recorded by a host (pid ${s.pid}); detach first`);
    db.deleteSession(id);
    return `deleted session ${id} (process ${s.pid})`;
  } finally {
    db.close();
  }
}
