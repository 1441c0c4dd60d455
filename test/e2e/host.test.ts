/**
 * The native host against real processes, over real stdio native messaging:
 * the failure paths a user meets, several jobs at once, repeated attach/detach,
 * and what happens when the job or the host dies mid-stream.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate } from '../../src/protocol/panel';
import { HostDriver, isType } from './host-driver';
import { ROOT, pythonPath, startTinyJob, type Job, type PassRecord } from './jobs';

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

function host(): HostDriver {
  const driver = new HostDriver();
  cleanup.push(() => driver.kill());
  driver.send({ type: 'hello', version: 1 });
  return driver;
}

async function job(args: string[] = []): Promise<Job> {
  const j = await startTinyJob(args);
  cleanup.push(() => j.stop());
  return j;
}

function spawnIdle(command: string, args: string[]): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'ignore'] });
  cleanup.push(() => child.kill('SIGKILL'));
  return child;
}

async function waitForLine(child: ChildProcess, text: string) {
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no "${text}" from ${child.pid}`)), 60000);
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function attachError(driver: HostDriver, pid: number) {
  const from = driver.messages.length;
  driver.send({ type: 'attach', pid });
  return driver.waitFor(isType('error', pid), 30000, from);
}

/** The job's latest printed pass once it satisfies `ok`, or null after `ms`. */
async function lastPassWithin(j: Job, ms: number, ok: (p: PassRecord) => boolean) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const last = j.passes().at(-1);
    if (last && ok(last)) return last;
    await new Promise((r) => setTimeout(r, 20));
  }
  return null;
}

const sumCounts = (u: JobUpdate) => u.counts.reduce((a, b) => a + b, 0);
const fdCount = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;

describe('native host', () => {
  it('explains why it cannot attach: no process, not Python, no torch, no MoE model', async () => {
    const driver = host();
    const gone = await attachError(driver, 2 ** 30);
    expect(gone.code).toBe('no_such_process');

    const sleeper = spawnIdle('sleep', ['60']);
    const notPython = await attachError(driver, sleeper.pid!);
    expect(notPython.code).toBe('not_python');
    expect(notPython.message).toMatch(/not a Python process/);

    const plain = spawnIdle(pythonPath(), ['-c', 'import time\nprint("ready", flush=True)\nwhile True: time.sleep(0.05)']);
    await waitForLine(plain, 'ready');
    const noTorch = await attachError(driver, plain.pid!);
    expect(noTorch.code).toBe('no_torch');

    const dense = spawnIdle(pythonPath(), [path.join(ROOT, 'test/jobs/no_moe_job.py')]);
    await waitForLine(dense, 'ready');
    const fdsBefore = fdCount(dense.pid!);
    const noMoe = await attachError(driver, dense.pid!);
    expect(noMoe.code).toBe('no_moe');
    expect(noMoe.hint).toBeTruthy();
    // A dense Llama has nothing router-like: the message says what the probe looks for.
    expect(noMoe.message).toMatch(/No MoE layer the probe understands was found among the \d+ live torch modules\. No module looked like a router/);
    // The probe left nothing behind: no socket, the fds the job had before.
    await new Promise((r) => setTimeout(r, 1500));
    expect(fs.existsSync(`/tmp/moe-devtools-${process.getuid!()}/probe-${dense.pid}.sock`)).toBe(false);
    expect(fdCount(dense.pid!)).toBe(fdsBefore);
    expect(dense.exitCode).toBeNull();
  });

  it('gives up cleanly on a job whose main thread never returns to Python, and leaves nothing in it', async () => {
    // The main thread blocks reading stdin (one long C call); a second thread keeps running,
    // so the injector finds a safe point, but the queued bootstrap cannot run until the read returns.
    const script = [
      'import sys, threading, time, torch',
      'def tick():',
      '    while True:',
      '        time.sleep(0.01)',
      'threading.Thread(target=tick, daemon=True, name="ticker").start()',
      'print("ready", flush=True)',
      'sys.stdin.buffer.read(1)',
      'print("back", flush=True)',
      'for _ in range(100):',
      '    time.sleep(0.01)',
      'print("threads", sorted(t.name for t in threading.enumerate()), flush=True)',
      'while True:',
      '    time.sleep(0.01)',
    ].join('\n');
    const child = spawn(pythonPath(), ['-c', script], { stdio: ['pipe', 'pipe', 'pipe'] });
    cleanup.push(() => child.kill('SIGKILL'));
    let stderr = '';
    let stdout = '';
    child.stderr!.on('data', (d) => (stderr += d));
    child.stdout!.on('data', (d) => (stdout += d));
    await waitForLine(child, 'ready');
    const driver = new HostDriver({ MOE_DEVTOOLS_ATTACH_TIMEOUT_MS: '3000' });
    cleanup.push(() => driver.kill());
    driver.send({ type: 'hello', version: 1 });
    const started = Date.now();
    const timedOut = await attachError(driver, child.pid!);
    expect(timedOut.code).toBe('attach_timeout');
    expect(timedOut.message).toMatch(/did not start in process \d+ within 3 s/);
    expect(timedOut.hint).toMatch(/Nothing is left behind in the job/);
    expect(Date.now() - started).toBeLessThan(15000);
    // Now let the main thread return to Python: the late bootstrap must do nothing.
    child.stdin!.write('x');
    const deadline = Date.now() + 30000;
    while (!/threads \[.*\]\n/.test(stdout) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const socket = `/tmp/moe-devtools-${process.getuid!()}/probe-${child.pid}.sock`;
    expect(fs.existsSync(socket)).toBe(false);
    expect(/threads \[(.*)\]\n/.exec(stdout)?.[1], stdout).toBe("'MainThread', 'ticker'"); // no probe thread started late
    expect(stderr).toBe('');
    // And a later attach gets in as usual (this job has no MoE model, which the probe then says).
    const later = await attachError(driver, child.pid!);
    expect(later.code, later.message).toBe('no_moe');
    expect(child.exitCode).toBeNull();
  });

  it('answers malformed panel messages with an error and keeps serving', async () => {
    const driver = host();
    driver.send({ type: 'attach', pid: -3 });
    const bad = await driver.waitFor(isType('error'));
    expect(bad.code).toBe('bad_request');
    const junk = Buffer.from('{not json');
    const head = Buffer.alloc(4);
    head.writeUInt32LE(junk.length);
    driver.sendRaw(Buffer.concat([head, junk]));
    await driver.waitFor((m) => m.type === 'error' && /JSON/.test(m.message));
    driver.send({ type: 'list' });
    await driver.waitFor(isType('processes'));
  });

  it('attaches to two jobs at once and relays both', async () => {
    const [a, b] = [await job(), await job(['--experts', '4', '--top-k', '1'])];
    const driver = host();
    driver.send({ type: 'attach', pid: a.pid });
    driver.send({ type: 'attach', pid: b.pid });
    // Two injections at once on a loaded 2-core machine can take a while: a generous limit.
    const ua = await driver.waitFor((m): m is JobUpdate => m.type === 'update' && m.pid === a.pid && m.passes >= 3, 60000);
    const ub = await driver.waitFor((m): m is JobUpdate => m.type === 'update' && m.pid === b.pid && m.passes >= 3, 60000);
    expect(ua.widths).toEqual(new Array(ua.layers).fill(8));
    expect(ub.widths).toEqual(new Array(ub.layers).fill(4));
    expect(ua.tokens).toEqual(new Array(ua.layers).fill(ua.passes * 32));
    expect(sumCounts(ua)).toBe(ua.passes * 32 * 2 * ua.layers);
    expect(sumCounts(ub)).toBe(ub.passes * 32 * 1 * ub.layers);
  });

  it('keeps a bounded history and answers window, layer and token-pass queries from it', async () => {
    const j = await job();
    const driver = new HostDriver({ MOE_DEVTOOLS_HISTORY_MB: '1' });
    cleanup.push(() => driver.kill());
    driver.send({ type: 'attach', pid: j.pid });
    await driver.waitFor((m) => m.type === 'update' && m.pid === j.pid && m.passes >= 15, 30000);
    const from = driver.messages.length;
    driver.send({ type: 'history', pid: j.pid, layer: 2 });
    const history = await driver.waitFor(isType('history', j.pid), 10000, from);
    expect(history.done).toBe(true);
    expect(history.layer).toBe(2);
    expect(history.updates.length).toBeGreaterThan(3);
    // Cumulative snapshots, oldest first: each layer-2 row is the job's own routing summed
    // over the passes it covers, so it grows by exactly passes x tokens x top-k.
    for (const u of history.updates) {
      expect([u.layers, u.widths, u.tokens]).toEqual([1, [8], [u.passes * 32]]); // layer 2 alone, as a one-layer update
      expect(u.counts.reduce((a, b) => a + b, 0)).toBe(u.passes * 32 * 2);
    }
    const passes = history.updates.map((u) => u.passes);
    expect([...passes].sort((a, b) => a - b)).toEqual(passes);
    const tokenPass = driver.messages.find((m) => m.type === 'tokens' && m.pid === j.pid);
    expect(tokenPass).toBeTruthy();
    const before = driver.messages.length;
    driver.send({ type: 'token-pass', pid: j.pid, pass: (tokenPass as { pass: number }).pass });
    const replay = await driver.waitFor((m) => m.type === 'tokens' && m.pid === j.pid && m.pass === (tokenPass as { pass: number }).pass, 10000, before);
    expect(replay).toEqual(tokenPass);
    const stats = await driver.waitFor(isType('host-stats'), 5000);
    expect(stats.historyCapBytes).toBe(1024 * 1024);
    expect(stats.historyBytes).toBeLessThanOrEqual(stats.historyCapBytes);
  });

  it('attaches and detaches 20 times to one job without leaking hooks, threads or files', async () => {
    const j = await job();
    const driver = host();
    const baselineHooks = j.passes()[0].hooks;
    const fdsBefore = fdCount(j.pid);
    const times: number[] = [];
    for (let i = 0; i < 20; i++) {
      const from = driver.messages.length;
      driver.send({ type: 'attach', pid: j.pid });
      const attached = await driver.waitFor(isType('attached', j.pid), 30000, from);
      times.push(attached.ms);
      await driver.waitFor((m) => m.type === 'update' && m.pid === j.pid, 10000, from);
      driver.send({ type: 'detach', pid: j.pid });
      await driver.waitFor(isType('detached', j.pid), 10000, from);
    }
    await new Promise((r) => setTimeout(r, 500));
    const n = j.passes().length;
    while (j.passes().length < n + 3) await new Promise((r) => setTimeout(r, 50));
    const last = j.passes().at(-1)!;
    expect(last.hooks).toBe(baselineHooks);
    expect(last.threads).toEqual(['MainThread']);
    expect(fdCount(j.pid)).toBe(fdsBefore);
    expect(fs.existsSync(`/tmp/moe-devtools-${process.getuid!()}/probe-${j.pid}.sock`)).toBe(false);
    times.sort((x, y) => x - y);
    console.log(`20 attaches: median ${times[10]} ms, max ${times[19]} ms (first ${times[0]} ms)`);
  });

  it('tells the panel within a second when the job dies mid-stream', async () => {
    const j = await job();
    const driver = host();
    driver.send({ type: 'attach', pid: j.pid });
    await driver.waitFor((m) => m.type === 'update' && m.pid === j.pid);
    const killedAt = Date.now();
    j.process.kill('SIGKILL');
    const detached = await driver.waitFor(isType('detached', j.pid), 5000);
    expect(detached.reason).toBe('process_exited');
    expect(Date.now() - killedAt).toBeLessThan(1000);
  });

  it('when the host dies mid-stream the probe removes its hooks within a second', async () => {
    const j = await job();
    const baselineHooks = j.passes()[0].hooks;
    const driver = host();
    driver.send({ type: 'attach', pid: j.pid });
    await driver.waitFor((m) => m.type === 'update' && m.pid === j.pid);
    // The probe's first update can reach us before the job has printed the pass it counted.
    expect(await lastPassWithin(j, 5000, (p) => p.hooks > baselineHooks), 'the job never ran a pass with the probe hooks in').toBeTruthy();
    driver.kill('SIGKILL');
    const killedAt = Date.now();
    let cleanAt = 0;
    while (Date.now() - killedAt < 5000) {
      const last = j.passes().at(-1)!;
      if (last.hooks === baselineHooks && last.threads.length === 1) {
        cleanAt = Date.now();
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(cleanAt, 'probe hooks still present 5 s after the host died').toBeGreaterThan(0);
    expect(cleanAt - killedAt).toBeLessThan(1000);
  });

  it('on browser port close (stdin EOF) detaches every probe and exits; the job carries on', async () => {
    const j = await job();
    const baselineHooks = j.passes()[0].hooks;
    const driver = host();
    driver.send({ type: 'attach', pid: j.pid });
    await driver.waitFor((m) => m.type === 'update' && m.pid === j.pid);
    driver.process.stdin!.end();
    expect(await driver.exited()).toBe(0);
    const n = j.passes().length;
    while (j.passes().length < n + 3) await new Promise((r) => setTimeout(r, 50));
    expect(j.passes().at(-1)!.hooks).toBe(baselineHooks);
    expect(j.process.exitCode).toBeNull();
  });

  it('connects over TCP (as through an SSH tunnel) only with the probe token', async () => {
    const dir = fs.mkdtempSync('/tmp/moe-tcp-');
    const script = [
      'import sys, time, torch',
      `sys.path.insert(0, ${JSON.stringify(path.join(ROOT, 'native-host'))})`,
      `sys.path.insert(0, ${JSON.stringify(path.join(ROOT, 'test/jobs'))})`,
      'import moe_probe',
      'from tiny_moe_job import build_model',
      'torch.set_num_threads(1)',
      'model = build_model("mixtral", 2, 4, 2, 32, 0).eval()',
      'moe_probe.attach(model, tcp_port=0)',
      'x = torch.randint(0, 256, (1, 8))',
      'print("ready", flush=True)',
      'while True:',
      '    with torch.no_grad(): model(x)',
      '    time.sleep(0.02)',
    ].join('\n');
    const child = spawn(pythonPath(), ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, MOE_DEVTOOLS_SOCKET_DIR: dir } });
    cleanup.push(() => child.kill('SIGKILL'));
    await waitForLine(child, 'ready');
    const info = JSON.parse(fs.readFileSync(path.join(dir, `probe-${child.pid}.tcp.json`), 'utf8'));
    expect(info.address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(fs.statSync(path.join(dir, `probe-${child.pid}.tcp.json`)).mode & 0o777).toBe(0o600);
    const driver = host();
    driver.send({ type: 'connect', address: info.address, token: '0'.repeat(32) });
    const refused = await driver.waitFor(isType('error'), 15000);
    expect(refused.message).toMatch(/No probe answered/);
    driver.send({ type: 'connect', address: '10.1.2.3:80', token: info.token });
    await driver.waitFor((m) => m.type === 'error' && /loopback/.test(m.message));
    driver.send({ type: 'connect', address: info.address, token: info.token });
    const attached = await driver.waitFor(isType('attached', child.pid!), 15000);
    expect(attached.method).toBe('tcp');
    const update = await driver.waitFor((m): m is JobUpdate => m.type === 'update' && m.pid === child.pid && m.passes >= 2);
    expect(sumCounts(update)).toBe(update.passes * 8 * 2 * 2);
  });

  it('attaches over the socket of a job started with `python -m moe_probe run`, without injecting', async () => {
    const dir = fs.mkdtempSync('/tmp/moe-run-');
    const log = path.join(dir, 'job.jsonl');
    const child = spawn(pythonPath(), ['-m', 'moe_probe', 'run', path.join(ROOT, 'test/jobs/tiny_moe_job.py'), '--log', log], {
      stdio: 'ignore',
      env: { ...process.env, PYTHONPATH: path.join(ROOT, 'native-host') },
    });
    cleanup.push(() => child.kill('SIGKILL'));
    const driver = host();
    const deadline = Date.now() + 60000;
    let listed: HostMessage | undefined;
    while (Date.now() < deadline) {
      const from = driver.messages.length;
      driver.send({ type: 'list' });
      const list = await driver.waitFor(isType('processes'), 10000, from);
      listed = list.processes.find((p) => p.pid === child.pid && p.probe) ? list : undefined;
      if (listed && fs.existsSync(log) && fs.readFileSync(log, 'utf8').includes('"pass"')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(listed, 'the job never showed up as having a probe').toBeTruthy();
    driver.send({ type: 'attach', pid: child.pid! });
    const attached = await driver.waitFor(isType('attached', child.pid!), 20000);
    expect(attached.method).toBe('socket');
    const update = await driver.waitFor((m): m is JobUpdate => m.type === 'update' && m.pid === child.pid && m.passes >= 2);
    expect(sumCounts(update)).toBe(update.passes * 32 * 2 * update.layers);
  });
});
