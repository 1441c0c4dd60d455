/**
 * `moe-devtools history` and `moe-devtools plan` on real files: a recording of a real job (made by
 * `record`) imported into a history database, listed, exported back with exactly the same
 * snapshots, reported; a placement plan from it; a damaged database refused and left untouched.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobUpdate } from '../../src/protocol/panel';
import { ROOT, startTinyJob, type Job } from './jobs';

const CLI = path.join(ROOT, 'bin/moe-devtools.mjs');

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const updates = (file: string) => fs.readFileSync(file, 'utf8').trim().split('\n').slice(1).map((l) => JSON.parse(l)).filter((m): m is JobUpdate => m.type === 'update');

describe('moe-devtools history and plan', () => {
  let job: Job;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-cli-history-'));
  const rec = path.join(dir, 'run.moerec');
  const db = path.join(dir, 'history.sqlite');

  beforeAll(async () => {
    job = await startTinyJob(['--sleep', '0.01']);
    const r = await cli(['record', String(job.pid), '--seconds', '4', '--rate', '30', '-o', rec]);
    expect(r.code, r.stderr).toBe(0);
  });

  afterAll(async () => {
    await job?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('imports a recording, lists it, and exports the same snapshots back', async () => {
    const imported = await cli(['history', 'import', rec, '--db', db]);
    expect(imported.code, imported.stderr).toBe(0);
    expect(imported.stdout).toMatch(/imported .*run\.moerec as session 1/);
    const list = await cli(['history', 'list', '--db', db, '--json']);
    expect(list.code, list.stderr).toBe(0);
    const { sessions } = JSON.parse(list.stdout);
    const original = updates(rec);
    expect(sessions).toHaveLength(1);
    expect(sessions[0]).toMatchObject({ id: 1, pid: job.pid, source: 'import', snapshots: original.length, passes: original.at(-1)!.passes });
    expect((await cli(['history', 'list', '--db', db])).stdout).toMatch(/\[imported\] run\.moerec/);

    const out = path.join(dir, 'back.moerec');
    const exported = await cli(['history', 'export', '1', '-o', out, '--db', db]);
    expect(exported.code, exported.stderr).toBe(0);
    const back = updates(out);
    expect(back.map((u) => [u.passes, u.counts, u.health, u.timeS])).toEqual(original.map((u) => [u.passes, u.counts, u.health, u.timeS]));
    // a time range: the snapshots from 1 s to 2 s after the first
    const part = path.join(dir, 'part.moerec');
    expect((await cli(['history', 'export', '1', '--from', '1', '--to', '2', '-o', part, '--db', db])).code).toBe(0);
    const t0 = original[0]!.ts;
    expect(updates(part).map((u) => u.passes)).toEqual(original.filter((u) => u.ts >= t0 + 1 && u.ts <= t0 + 2).map((u) => u.passes));
    // what the other commands read
    const report = await cli(['report', out]);
    expect(report.code, report.stderr).toBe(0);
    expect(report.stdout).toMatch(/MixtralForCausalLM, 4 MoE layers/);
    // nothing is overwritten without --force
    const again = await cli(['history', 'export', '1', '-o', out, '--db', db]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists \(pass --force/);

    expect((await cli(['history', 'delete', '1', '--db', db])).stdout).toMatch(/deleted session 1/);
    expect((await cli(['history', 'list', '--db', db])).stdout).toMatch(/no sessions/);
  });

  it('plans expert placement from a recording, never worse than EPLB, and writes it as JSON', async () => {
    const file = path.join(dir, 'plan.json');
    const r = await cli(['plan', rec, '--devices', '2', '--redundant', '2', '-o', file]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/expert placement on 2 devices with 2 redundant slots/);
    const plan = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(plan).toMatchObject({ format: 'moe-devtools-placement', devices: 2, redundant: 2, slotsPerDevice: 5 });
    expect(plan.layers).toHaveLength(4);
    const last = updates(rec).at(-1)!;
    plan.layers.forEach((l: { load: number[]; physical_to_logical: number[]; logical_count: number[]; balancedness: { eplb: number; ours: number } }, i: number) => {
      expect(l.load).toEqual(last.counts.slice(8 * i, 8 * i + 8)); // the loads since attach
      expect(l.physical_to_logical).toHaveLength(10);
      expect(l.logical_count.reduce((a, b) => a + b, 0)).toBe(10);
      expect(l.balancedness.ours).toBeGreaterThanOrEqual(l.balancedness.eplb - 1e-12);
    });
    expect(plan.sglang.physical_to_logical_map).toHaveLength(4);
    const bad = await cli(['plan', rec, '--devices', '3']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/8 experts and 0 redundant slots make 8 slots, which 3 devices cannot share equally/);
  });

  it('refuses a damaged database with the reason, and leaves it as it was', async () => {
    const damaged = path.join(dir, 'damaged.sqlite');
    fs.writeFileSync(damaged, 'this is not a database at all, just text that happens to be here');
    const before = fs.readFileSync(damaged);
    const r = await cli(['history', 'list', '--db', damaged]);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    expect(r.stderr).toMatch(/is damaged .*left as it is/);
    expect(fs.readFileSync(damaged).equals(before)).toBe(true);
  });
});
