/**
 * The history database on real SQLite files (node-sqlite3-wasm): what goes in comes back exact
 * (counts, float totals bit for bit, token records, anomalies), a long range down-samples to whole
 * snapshots, a damaged, foreign or newer file is refused and left byte for byte as it was, and
 * retention removes expired sessions, then the oldest ones first.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate, TokenUpdate } from '../../src/protocol/panel';
import type { ModelInfo, ProbeTokens } from '../../src/protocol/probe';
import { unknownLayer } from '../../src/analysis/layers';
import { decodeSnapshot, encodeSnapshot, KEY_INTERVAL, type SnapshotValues } from '../../native-host/src/history-codec';
import { HISTORY_SCHEMA, HistoryDatabase, HistoryDbError, type StoredCounts } from '../../native-host/src/history-db';
import { prng } from './prng';

const dirs: string[] = [];
function tempFile(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-history-'));
  dirs.push(dir);
  return path.join(dir, 'history.sqlite');
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const WIDTHS = [8, 4, 8];
const model: ModelInfo = { id: 0, class: 'MixtralForCausalLM', model_type: 'mixtral', device: 'cpu', dtype: 'float32', layers: WIDTHS.map((w, i) => unknownLayer(i, w, 2)) };
const attached = (pid: number): Extract<HostMessage, { type: 'attached' }> => ({
  type: 'attached', pid, method: 'ptrace', ms: 50, python: '3.11', framework: 'torch', frameworkVersion: '2', argv: ['python', 'job.py'], models: [model],
});

/** A run of cumulative snapshots with counters that grow and float totals that wander. */
function snapshots(n: number, seed = 1, t0 = 1_700_000_000): StoredCounts[] {
  const rand = prng(seed);
  const total = WIDTHS.reduce((a, b) => a + b, 0);
  const counts = new Float64Array(total);
  const tokens = new Float64Array(WIDTHS.length);
  const health = new Float64Array(WIDTHS.length * 6);
  const timeS = new Float64Array(WIDTHS.length);
  const out: StoredCounts[] = [];
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < total; j++) counts[j]! += Math.floor(rand() * 40);
    for (let l = 0; l < WIDTHS.length; l++) tokens[l]! += 100;
    for (let j = 0; j < health.length; j++) health[j]! += rand() * 3.1;
    for (let l = 0; l < WIDTHS.length; l++) timeS[l]! += rand() * 1e-3;
    out.push({
      model: 0, ts: t0 + i * 0.033, passes: (i + 1) * 3, widths: WIDTHS, dropped: 0, probeS: i * 1e-5, prefill: i, decode: 2 * i, shape: [1, 16],
      values: { counts: Float64Array.from(counts), tokens: Float64Array.from(tokens), health: Float64Array.from(health), maxLogit: Float64Array.from(WIDTHS, () => rand() * 9), timeS: Float64Array.from(timeS) },
    });
  }
  return out;
}

function expectSame(u: JobUpdate, s: StoredCounts) {
  expect(u.ts).toBe(s.ts);
  expect(u.passes).toBe(s.passes);
  expect(u.widths).toEqual(s.widths);
  expect(u.counts).toEqual(Array.from(s.values.counts));
  expect(u.tokens).toEqual(Array.from(s.values.tokens!));
  // floats bit for bit: the XOR coding is lossless
  expect(u.health).toEqual(Array.from(s.values.health!));
  expect(u.maxLogit).toEqual(Array.from(s.values.maxLogit!));
  expect(u.timeS).toEqual(Array.from(s.values.timeS!));
  expect([u.probeS, u.prefill, u.decode, u.shape]).toEqual([s.probeS, s.prefill, s.decode, s.shape]);
}

describe('snapshot codec', () => {
  it('round-trips keys and differences exactly, including large counts and odd floats', () => {
    const a: SnapshotValues = {
      counts: Float64Array.from([0, 1, 2 ** 40, 2 ** 52 - 1]), tokens: Float64Array.from([5]),
      health: Float64Array.from([NaN, -0, Infinity, 1e-310]), maxLogit: null, timeS: Float64Array.from([0.1]),
    };
    const b: SnapshotValues = { ...a, counts: Float64Array.from([3, 1, 2 ** 40 + 7, 2 ** 52 - 1]), health: Float64Array.from([1.5, 0, -Infinity, 2]) };
    const key = encodeSnapshot(a, null);
    const diff = encodeSnapshot(b, a);
    const da = decodeSnapshot(key, null);
    const db = decodeSnapshot(diff, da);
    expect(Array.from(da.counts)).toEqual(Array.from(a.counts));
    expect(Object.is(da.health![1], -0)).toBe(true);
    expect(Array.from(db.counts)).toEqual(Array.from(b.counts));
    expect(Array.from(db.health!)).toEqual([1.5, 0, -Infinity, 2]);
    expect(db.maxLogit).toBeNull();
    expect(() => decodeSnapshot(diff, null)).toThrow(/without the snapshot before it/);
    expect(() => decodeSnapshot(Uint8Array.from([1, 2, 3]), null)).toThrow(/not valid deflate/);
  });

  it('stores small differences in little room', () => {
    const s = snapshots(2);
    const key = encodeSnapshot(s[0]!.values, null).length;
    const diff = encodeSnapshot(s[1]!.values, s[0]!.values).length;
    expect(diff).toBeLessThan(key + 1);
  });
});

describe('history database', () => {
  it('gives back every snapshot, token record and anomaly exactly, and lists the session', () => {
    const file = tempFile();
    const db = HistoryDatabase.open(file);
    const id = db.startSession({ pid: 4242, source: 'attach', name: 'python job.py', started: 1_700_000_000_000, attached: attached(4242) });
    const snaps = snapshots(3 * KEY_INTERVAL + 5);
    db.transaction(() => snaps.forEach((s) => db.addCounts(id, s)));
    const tokens: ProbeTokens = {
      t: 'tokens', model: 0, pass: 7, phase: 'prefill', n: 2, k: 2, token_ids: new Uint8Array(new Int32Array([65, 66]).buffer), texts: ['A', 'B'],
      layers: [{ layer: 1, n: 2, k: 2, ids: new Uint8Array(new Int32Array([3, 1, 0, 2]).buffer), weights: new Uint8Array(new Float32Array([0.75, 0.25, 0.5, 0.5]).buffer) }],
    };
    db.addTokens(id, snaps[10]!.ts, tokens);
    db.addAnomaly(id, 0, { metric: 'routing', layer: 1, label: 'L1', ts: snaps[100]!.ts, detectedTs: snaps[120]!.ts, value: 0.2, reference: 0, referenceFrom: 0, referenceTo: 1, message: 'shifted' });
    db.endSession(id, 1_700_000_010_000);
    db.close();

    const again = HistoryDatabase.open(file); // as a new host would, later
    const [info] = again.listSessions();
    expect(info).toMatchObject({ id, pid: 4242, name: 'python job.py', modelClass: 'MixtralForCausalLM', layers: 3, snapshots: snaps.length, tokenPasses: 1, anomalies: 1, ended: 1_700_000_010_000 });
    expect(info!.firstTs).toBe(snaps[0]!.ts);
    expect(info!.lastTs).toBe(snaps.at(-1)!.ts);
    const { messages, available } = again.readSession(id);
    expect(available).toBe(snaps.length);
    expect(messages[0]).toMatchObject({ type: 'attached', pid: 4242 });
    const updates = messages.filter((m): m is JobUpdate => m.type === 'update');
    expect(updates).toHaveLength(snaps.length);
    updates.forEach((u, i) => expectSame(u, snaps[i]!));
    const tok = messages.find((m): m is TokenUpdate => m.type === 'tokens')!;
    expect(tok).toMatchObject({ pass: 7, phase: 'prefill', tokenIds: [65, 66], texts: ['A', 'B'] });
    expect(tok.layers[0]).toEqual({ layer: 1, n: 2, k: 2, ids: [3, 1, 0, 2], weights: [0.75, 0.25, 0.5, 0.5] });
    // the token record sits in time order among the updates
    expect(messages.indexOf(tok)).toBe(messages.indexOf(updates[10]!) + 1);
    expect(messages.at(-1)).toMatchObject({ type: 'anomaly', model: 0, anomaly: { metric: 'routing', layer: 1, message: 'shifted' } });
    again.close();
  });

  it('down-samples a long range to whole snapshots, first and last included, and reads a time range', () => {
    const file = tempFile();
    const db = HistoryDatabase.open(file);
    const id = db.startSession({ pid: 1, source: 'attach', name: 'j', started: 0, attached: attached(1) });
    const snaps = snapshots(1000);
    db.transaction(() => snaps.forEach((s) => db.addCounts(id, s)));
    const { messages, available } = db.readSession(id, { points: 50 });
    const ups = messages.filter((m): m is JobUpdate => m.type === 'update');
    expect(available).toBe(1000);
    expect(ups.length).toBeLessThanOrEqual(50);
    expect(ups.length).toBeGreaterThanOrEqual(40);
    expect(ups[0]!.ts).toBe(snaps[0]!.ts);
    expect(ups.at(-1)!.ts).toBe(snaps[999]!.ts);
    // each returned snapshot is exactly one of the stored ones
    const byTs = new Map(snaps.map((s) => [s.ts, s]));
    for (const u of ups) expectSame(u, byTs.get(u.ts)!);
    const range = db.readSession(id, { from: snaps[200]!.ts, to: snaps[299]!.ts }).messages.filter((m) => m.type === 'update');
    expect(range).toHaveLength(100);
    expectSame(range[0] as JobUpdate, snaps[200]!);
    db.close();
  });

  it('refuses a damaged file with a clear message and leaves it byte for byte as it was', () => {
    const file = tempFile();
    const db = HistoryDatabase.open(file);
    const id = db.startSession({ pid: 1, source: 'attach', name: 'j', started: 0, attached: attached(1) });
    db.transaction(() => snapshots(200).forEach((s) => db.addCounts(id, s)));
    db.close();
    const bytes = fs.readFileSync(file);
    // overwrite the header and some of the pages after it
    const damaged = Buffer.from(bytes);
    damaged.fill(0x5a, 0, 100);
    damaged.fill(0x00, 4096, 8192);
    fs.writeFileSync(file, damaged);
    const err = (() => {
      try {
        HistoryDatabase.open(file);
      } catch (e) {
        return e as HistoryDbError;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(HistoryDbError);
    expect(err!.code).toBe('corrupt');
    expect(err!.message).toMatch(/is damaged .* left as it is and history is off/);
    expect(err!.hint).toMatch(/Move it aside/);
    expect(fs.readFileSync(file).equals(damaged)).toBe(true);

    // damage deeper in: the header is fine, the pages of the tables are not
    const inner = Buffer.from(bytes);
    inner.fill(0xff, 2 * 4096, bytes.length);
    fs.writeFileSync(file, inner);
    expect(() => HistoryDatabase.open(file)).toThrow(/is damaged/);
    expect(fs.readFileSync(file).equals(inner)).toBe(true);
  });

  it('refuses a database from a newer version, and an SQLite file that is not a history, untouched', () => {
    const file = tempFile();
    HistoryDatabase.open(file).close();
    // what a future version would have written
    const sqlite = require('node-sqlite3-wasm');
    const raw = new sqlite.Database(file);
    raw.run("UPDATE meta SET value = ? WHERE key = 'schema'", [String(HISTORY_SCHEMA + 1)]);
    raw.close();
    const before = fs.readFileSync(file);
    expect(() => HistoryDatabase.open(file)).toThrow(/written by a newer MoE DevTools \(schema 2; this one reads up to 1\)/);
    try {
      HistoryDatabase.open(file);
    } catch (e) {
      expect((e as HistoryDbError).code).toBe('newer');
      expect((e as HistoryDbError).hint).toMatch(/Update MoE DevTools/);
    }
    expect(fs.readFileSync(file).equals(before)).toBe(true);

    const other = tempFile();
    const foreign = new sqlite.Database(other);
    foreign.exec('CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES (\'mine\')');
    foreign.close();
    const foreignBytes = fs.readFileSync(other);
    expect(() => HistoryDatabase.open(other)).toThrow(/not a MoE DevTools history/);
    expect(fs.readFileSync(other).equals(foreignBytes)).toBe(true);
  });

  it('retention: expired sessions go, then the oldest sessions first until the file fits', () => {
    const file = tempFile();
    const db = HistoryDatabase.open(file);
    const day = 86_400_000;
    const now = 100 * day;
    const ids: number[] = [];
    // five finished sessions, started a day apart, the first one 40 days ago
    for (let i = 0; i < 5; i++) {
      const started = now - (40 - i * 9) * day;
      const id = db.startSession({ pid: 100 + i, source: 'attach', name: `job ${i}`, started, attached: attached(100 + i) });
      db.transaction(() => snapshots(300, i + 1).forEach((s) => db.addCounts(id, s)));
      db.endSession(id, started + 3_600_000);
      ids.push(id);
    }
    const live = db.startSession({ pid: 999, source: 'attach', name: 'live', started: now - 1000, attached: attached(999) });
    db.transaction(() => snapshots(300, 9).forEach((s) => db.addCounts(live, s)));
    // 30 days of age: the session started 40 days ago goes (31 and 22 days: 31 goes too)
    const aged = db.enforceRetention({ maxBytes: 1e12, maxAgeMs: 30 * day }, now);
    expect(aged.removedSessions).toEqual([ids[0], ids[1]]);
    // a size cap that holds about two of the remaining four: the oldest go first, the live one stays
    const used = db.usedBytes();
    const sized = db.enforceRetention({ maxBytes: Math.floor(used * 0.62), maxAgeMs: 30 * day }, now);
    expect(sized.removedSessions).toEqual([ids[2], ids[3]]);
    expect(db.listSessions().map((s) => s.id).sort()).toEqual([ids[4], live].sort());
    expect(db.usedBytes()).toBeLessThanOrEqual(Math.floor(used * 0.62));
    // the file on disk shrinks too (incremental vacuum)
    expect(db.fileBytes()).toBeLessThan(used);
    db.close();
  });

  it('trims the oldest part of a session still being recorded when it alone is over the cap, and it still reads', () => {
    const file = tempFile();
    const db = HistoryDatabase.open(file);
    const id = db.startSession({ pid: 1, source: 'attach', name: 'j', started: Date.now(), attached: attached(1) });
    const snaps = snapshots(20 * KEY_INTERVAL);
    db.transaction(() => snaps.forEach((s) => db.addCounts(id, s)));
    const used = db.usedBytes();
    const r = db.enforceRetention({ maxBytes: Math.floor(used * 0.7), maxAgeMs: 1e12 });
    expect(r.removedSessions).toEqual([]);
    expect(r.trimmedSnapshots).toBeGreaterThan(0);
    const ups = db.readSession(id).messages.filter((m): m is JobUpdate => m.type === 'update');
    expect(ups.length).toBe(snaps.length - r.trimmedSnapshots);
    // what is left still decodes to the exact stored snapshots (it starts at a key)
    expectSame(ups[0]!, snaps[r.trimmedSnapshots]!);
    expectSame(ups.at(-1)!, snaps.at(-1)!);
    // and the writer goes on chaining after the trim
    db.addCounts(id, snapshots(20 * KEY_INTERVAL + 1).at(-1)!);
    db.close();
  });

  it('closes sessions whose host is gone at the next open', () => {
    const file = tempFile();
    const db = HistoryDatabase.open(file);
    const id = db.startSession({ pid: 1, source: 'attach', name: 'j', started: 5, attached: attached(1) });
    const s = snapshots(3);
    s.forEach((x) => db.addCounts(id, x));
    db.close();
    // pretend the host that wrote it was killed: a pid that does not exist
    const sqlite = require('node-sqlite3-wasm');
    const raw = new sqlite.Database(file);
    raw.run('UPDATE sessions SET host_pid = 2147483000');
    raw.close();
    const again = HistoryDatabase.open(file);
    expect(again.session(id)!.ended).toBe(s.at(-1)!.ts * 1000);
    again.close();
  });
});
