/**
 * The canary that decides whether a debugger may touch the user's job, and the method chain
 * that uses it, with real processes. Both branches are exercised on any CPU: the debugger is
 * replaced at its seam (DebuggerOptions.gdbPath) by test/fakes/fake_gdb.py, which either really
 * queues the call (with the project's ptrace injector) or behaves as gdb 13 does on Intel
 * CPUs with AMX. The real gdb is also run once, and what it does must agree with its verdict.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forgetCanaryVerdicts, runCanary } from '../../native-host/src/debugger-canary';
import { findDebugger, injectGdb } from '../../native-host/src/debugger-inject';
import { injectProbe } from '../../native-host/src/inject';
import { readProcessFacts } from '../../native-host/src/processes';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const venvPython = path.join(root, '.venv/bin/python');
const python = fs.realpathSync(fs.existsSync(venvPython) ? venvPython : 'python3');
const nativeHost = path.join(root, 'native-host'); // holds moe_inject, as dist/host does

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-canary-test-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** An executable that runs fake_gdb.py in the given mode. */
function fakeGdb(mode: string): string {
  const file = path.join(tmp, `gdb-${mode}`);
  fs.writeFileSync(file, `#!/bin/sh\nFAKE_GDB_MODE=${mode} exec ${JSON.stringify(python)} ${JSON.stringify(path.join(root, 'test/fakes/fake_gdb.py'))} "$@"\n`, { mode: 0o755 });
  return file;
}

/** A plain Python job: sleeps between ticks, prints each; resolves once it is running. */
async function sleeper(): Promise<{ pid: number; ticks: () => number; stderr: () => string; stop: () => void }> {
  const child = spawn(python, ['-u', '-c', 'import time\nprint("ready", flush=True)\nwhile True:\n    time.sleep(0.01)\n    print("tick", flush=True)\n'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  return { pid: child.pid!, ticks: () => out.split('tick').length - 1, stderr: () => err, stop: () => child.kill('SIGKILL') };
}

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('debugger canary', () => {
  it('passes a debugger that queues the call and leaves the process well', async () => {
    const verdict = await runCanary('gdb', python, { gdbPath: fakeGdb('works') });
    expect(verdict).toEqual({ ok: true, detail: 'gdb passed its canary' });
  }, 60000);

  it("fails gdb 13's AMX failure, with gdb's own words", async () => {
    const verdict = await runCanary('gdb', python, { gdbPath: fakeGdb('amx_error') });
    expect(verdict.ok).toBe(false);
    expect(verdict.detail).toMatch(/^gdb failed on a test process of the same Python: .*Couldn't write extended state status: Bad address\./);
  }, 60000);

  it('fails a debugger that reports success but kills the process a moment later', async () => {
    const verdict = await runCanary('gdb', python, { gdbPath: fakeGdb('kills') });
    expect(verdict.ok).toBe(false);
    expect(verdict.detail).toMatch(/^gdb killed a test process of the same Python \(it killed by SIGKILL/);
  }, 60000);

  it('fails a debugger whose queued code never runs, or that makes the process write errors', async () => {
    const none = await runCanary('gdb', python, { gdbPath: fakeGdb('no_effect') });
    expect(none).toEqual({ ok: false, detail: 'gdb reported success, but the queued code never ran in a test process' });
    const noisy = await runCanary('gdb', python, { gdbPath: fakeGdb('stderr') });
    expect(noisy.ok).toBe(false);
    expect(noisy.detail).toMatch(/^gdb disturbed a test process of the same Python: OSError: \[Errno 514\]/);
  }, 60000);

  const gdb = findDebugger('gdb');
  it.runIf(gdb !== null)("the real gdb's verdict here agrees with what it does to a real job", async () => {
    const verdict = await runCanary('gdb', python, { gdbPath: gdb! });
    const job = await sleeper();
    try {
      const marker = path.join(tmp, 'real-gdb-ran');
      const facts = readProcessFacts(job.pid)!;
      let queued = true;
      try {
        await injectGdb(facts, `open(${JSON.stringify(marker)}, "w").write("x")\n`, { gdbPath: gdb! });
      } catch {
        queued = false;
      }
      await wait(500);
      const harmless = queued && fs.existsSync(marker) && job.stderr() === '' && fs.existsSync(`/proc/${job.pid}`);
      // On an AMD EPYC gdb 13 works; on an Intel Xeon with AMX it fails and may kill: either way, the
      // canary must have said so beforehand.
      expect(verdict.ok).toBe(harmless);
    } finally {
      job.stop();
    }
  }, 90000);
});

describe('attach method chain', () => {
  it('falls back to a debugger only after its canary passed, and says what each method did', async () => {
    forgetCanaryVerdicts();
    const job = await sleeper();
    const socketDir = path.join(tmp, 'chain-ok');
    try {
      const facts = readProcessFacts(job.pid)!;
      const injected = await injectProbe(facts, {
        probeRoot: path.join(tmp, 'no-probe-here'), socketDir, methods: ['ptrace', 'gdb'],
        injectorInterpreters: ['/nonexistent/python3'], gdbPath: fakeGdb('works'),
      });
      expect(injected.method).toBe('gdb');
      expect(injected.attempts.map((a) => [a.method, a.ok])).toEqual([['ptrace', false], ['gdb', true]]);
      expect(injected.attempts[0].message).toMatch(/nonexistent\/python3 was not found/);
      await wait(200);
      expect(job.stderr()).toBe('');
    } finally {
      job.stop();
    }
  }, 90000);

  it('never points a debugger that failed its canary at the job', async () => {
    forgetCanaryVerdicts();
    const job = await sleeper();
    try {
      const facts = readProcessFacts(job.pid)!;
      const before = job.ticks();
      const attempt = injectProbe(facts, {
        probeRoot: nativeHost, socketDir: path.join(tmp, 'chain-bad'), methods: ['ptrace', 'gdb'],
        injectorInterpreters: ['/nonexistent/python3'], gdbPath: fakeGdb('kills'),
      });
      await expect(attempt).rejects.toMatchObject({
        code: 'inject_failed',
        attempts: [
          { method: 'ptrace', ok: false, message: expect.stringMatching(/not found/) },
          { method: 'gdb', ok: false, message: expect.stringMatching(/^not used: gdb killed a test process/) },
        ],
      });
      await wait(400);
      expect(fs.existsSync(`/proc/${job.pid}`)).toBe(true); // the fake would have killed it, had it been used
      expect(job.ticks()).toBeGreaterThan(before);
    } finally {
      job.stop();
    }
  }, 90000);

  it('stops at a failure no other method can help with (the job is gone)', async () => {
    const facts = { pid: 2 ** 22 + 7, uid: 0, cmdline: ['python3'], exe: python, images: [] };
    await expect(injectProbe(facts, { probeRoot: nativeHost, socketDir: path.join(tmp, 'gone'), methods: ['ptrace', 'gdb'], gdbPath: fakeGdb('works') }))
      .rejects.toMatchObject({ code: 'no_such_process', attempts: [{ method: 'ptrace', ok: false }] });
  }, 60000);
});
