/**
 * The history database through the real native host and a real job: what one host wrote while
 * attached, a new host process lists and gives back exactly (every update the panel saw is
 * there, counts and float totals equal); a damaged or newer database is refused with a clear
 * message, left untouched, and attaching still works without history.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate } from '../../src/protocol/panel';
import { HostDriver, isType } from './host-driver';
import { startTinyJob, type Job } from './jobs';

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

function tempDb(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-history-e2e-'));
  cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'history.sqlite');
}

function host(db: string): HostDriver {
  const driver = new HostDriver({ MOE_DEVTOOLS_DB: db });
  cleanup.push(() => driver.kill());
  driver.send({ type: 'hello', version: 1 });
  return driver;
}

async function job(args: string[] = []): Promise<Job> {
  const j = await startTinyJob(args);
  cleanup.push(() => j.stop());
  return j;
}

async function sessions(driver: HostDriver) {
  const from = driver.messages.length;
  driver.send({ type: 'sessions' });
  return driver.waitFor(isType('sessions'), 20000, from);
}

/** Every message of a stored session (all parts). */
async function openSession(driver: HostDriver, session: number, extra: Record<string, unknown> = {}): Promise<HostMessage[]> {
  const from = driver.messages.length;
  driver.send({ type: 'session-open', session, ...extra });
  await driver.waitFor((m) => m.type === 'session-data' && m.session === session && m.done, 60000, from);
  return driver.messages.slice(from).filter((m): m is Extract<HostMessage, { type: 'session-data' }> => m.type === 'session-data' && m.session === session)
    .flatMap((m) => m.messages);
}

describe('history database through the native host', () => {
  it('a new host lists the session and gives back every snapshot the live panel saw, exactly', async () => {
    const db = tempDb();
    const j = await job(['--sleep', '0.01']);
    const a = host(db);
    a.send({ type: 'attach', pid: j.pid });
    await a.waitFor(isType('attached', j.pid), 60000);
    await new Promise((r) => setTimeout(r, 4000));
    a.send({ type: 'detach', pid: j.pid });
    await a.waitFor(isType('detached', j.pid), 20000);
    const live = a.messages.filter((m): m is JobUpdate => m.type === 'update' && m.pid === j.pid);
    expect(live.length).toBeGreaterThan(20);
    a.process.stdin!.end(); // as when the browser closes
    expect(await a.exited()).toBe(0);

    const b = host(db);
    const listed = await sessions(b);
    expect(listed.database).toMatchObject({ path: db, enabled: true });
    expect(listed.sessions).toHaveLength(1);
    const s = listed.sessions[0]!;
    expect(s).toMatchObject({ pid: j.pid, source: 'attach', modelClass: 'MixtralForCausalLM', layers: 4 });
    expect(s.name).toMatch(/tiny_moe_job\.py/);
    expect(s.ended).not.toBeNull();
    expect(s.snapshots).toBeGreaterThanOrEqual(live.length);
    expect(s.passes).toBe(live.at(-1)!.passes);

    const stored = (await openSession(b, s.id)).filter((m): m is JobUpdate => m.type === 'update');
    expect(stored).toHaveLength(s.snapshots);
    // every update the panel got is one of the stored snapshots, value for value
    const byPasses = new Map(stored.map((u) => [u.passes, u]));
    for (const u of live) {
      const twin = byPasses.get(u.passes)!;
      expect(twin, `pass ${u.passes}`).toBeDefined();
      expect(twin.counts).toEqual(u.counts);
      expect(twin.tokens).toEqual(u.tokens);
      expect(twin.health).toEqual(u.health);
      expect(twin.timeS).toEqual(u.timeS);
      expect(twin.ts).toBe(u.ts);
    }
    // the job's own log: the last snapshot's totals are what it routed over those passes
    const passes = j.passes();
    const lastStored = stored.at(-1)!;
    expect(lastStored.counts.reduce((x, y) => x + y, 0)).toBe(lastStored.passes * 2 * 16 * 2 * 4); // passes x batch 2 x seq 16 x top-2 x 4 layers
    expect(passes.length).toBeGreaterThanOrEqual(lastStored.passes);

    // down-sampled: 20 whole snapshots, first and last included
    const sampled = (await openSession(b, s.id, { points: 20 })).filter((m): m is JobUpdate => m.type === 'update');
    expect(sampled.length).toBeLessThanOrEqual(20);
    expect(sampled[0]!.passes).toBe(stored[0]!.passes);
    expect(sampled.at(-1)!.counts).toEqual(stored.at(-1)!.counts);
  });

  it('refuses a damaged or newer database with a clear message, leaves it as it was, and still attaches', async () => {
    const damaged = tempDb();
    fs.writeFileSync(damaged, Buffer.concat([Buffer.from('SQLite format 3\0'), Buffer.alloc(4080, 0x41)]));
    const before = fs.readFileSync(damaged);
    const j = await job();
    const h = host(damaged);
    const listed = await sessions(h);
    expect(listed.database.enabled).toBe(false);
    expect(listed.database.error?.message).toMatch(/is damaged|not a MoE DevTools history/);
    expect(listed.database.error?.hint).toBeTruthy();
    h.send({ type: 'attach', pid: j.pid });
    await h.waitFor(isType('update', j.pid), 60000);
    h.send({ type: 'detach', pid: j.pid });
    await h.waitFor(isType('detached', j.pid), 20000);
    h.process.stdin!.end();
    await h.exited();
    expect(fs.readFileSync(damaged).equals(before)).toBe(true);

    // a database a newer version wrote
    const newer = tempDb();
    const first = host(newer);
    await sessions(first); // creates it
    first.process.stdin!.end();
    await first.exited();
    const sqlite = require('node-sqlite3-wasm');
    const raw = new sqlite.Database(newer);
    raw.run("UPDATE meta SET value = '99' WHERE key = 'schema'");
    raw.close();
    const newerBytes = fs.readFileSync(newer);
    const second = host(newer);
    const refused = await sessions(second);
    expect(refused.database.enabled).toBe(false);
    expect(refused.database.error?.code).toBe('newer');
    expect(refused.database.error?.message).toMatch(/written by a newer MoE DevTools \(schema 99/);
    second.send({ type: 'session-open', session: 1 });
    const err = await second.waitFor(isType('error'), 10000);
    expect(err.code).toBe('history_unavailable');
    second.process.stdin!.end();
    await second.exited();
    expect(fs.readFileSync(newer).equals(newerBytes)).toBe(true);
  });
});
