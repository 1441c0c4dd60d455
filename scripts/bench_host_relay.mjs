// Host relay benchmark: a real job -> probe -> native host -> native-messaging output,
// with this script in the browser's place, reading the host's stdout frames
// (4-byte little-endian length + JSON) exactly as Chrome would.
//
// The job (scripts/bench_relay_job.py) runs a real torch MoE model paced to route
// about --rate token-expert assignments per second and makes itself attachable
// with moe_probe.attach(model). This script starts dist/host/moe-devtools-host,
// says hello, attaches to the job's pid and measures for --duration seconds:
//   - routing records (token-expert assignments) per second seen on the panel side,
//     from the increase of the summed counts of 'update' messages, against the
//     job's own rate over the same interval, and whether every update's counts are
//     exactly passes x assignments-per-pass (no routing lost or counted twice);
//   - update messages per second, and bytes per second of everything the host sent;
//   - the host's RSS (VmRSS from /proc, max) and CPU time;
//   - latency from the probe's snapshot time (update.ts, taken at the end of a
//     forward pass) to the moment this script reads the update: p50, p99, max.
// Then it detaches (the job's hooks must go), closes the host's stdin and checks
// that the host exits cleanly.
//
//   node scripts/bench_host_relay.mjs [--quick] [--duration S] [--rate N] [--model block|mixtral] [--json OUT]
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, requireProjectPython } from './python-env.mjs';
import { quantile } from './lib/stats.mjs';

const TARGET_P99_MS = 50;
const TARGET_RATE = 1e6;
const RATE_TOLERANCE = 0.03; // panel-side rate within 3 % of the job's own

function parseArgs(argv) {
  const opts = { quick: false, duration: null, rate: TARGET_RATE, model: 'block', json: null, settle: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--quick') opts.quick = true;
    else if (a === '--duration') opts.duration = Number(next());
    else if (a === '--rate') opts.rate = Number(next());
    else if (a === '--model') opts.model = next();
    else if (a === '--json') opts.json = next();
    else if (a === '--settle') opts.settle = Number(next());
    else if (a === '--help' || a === '-h') {
      console.log('usage: node scripts/bench_host_relay.mjs [--quick] [--duration S] [--rate N] [--model block|mixtral] [--settle S] [--json OUT]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (opts.duration === null) opts.duration = opts.quick ? 5 : 15;
  return opts;
}

const nowMs = () => performance.timeOrigin + performance.now(); // epoch ms, sub-millisecond
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function readProc(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]); // utime + stime
    return { rssBytes: rssKb * 1024, cpuS: ticks / 100 }; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

/** Messages received from a child, with waiters for the first one matching a predicate. */
class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    this.items.push(item);
    this.waiters = this.waiters.filter((w) => {
      if (!w.pred(item)) return true;
      clearTimeout(w.timer);
      w.resolve(item);
      return false;
    });
  }

  /** The first item from index `from` on that matches, waiting up to timeoutMs. */
  wait(pred, timeoutMs, what, from = 0) {
    const found = this.items.slice(from).find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }
}

/** JSON lines from the job's stdout. */
class JsonLines extends Inbox {
  constructor(stream) {
    super();
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let item;
        try {
          item = JSON.parse(line);
        } catch {
          continue;
        }
        item._at = nowMs();
        this.push(item);
      }
    });
  }
}

/** Native messaging frames from the host's stdout: 4-byte LE length + UTF-8 JSON, read as Chrome does. */
class NativeFrames extends Inbox {
  constructor(stream) {
    super();
    this.bytes = 0;
    let chunks = [];
    let buffered = 0;
    stream.on('data', (chunk) => {
      const at = nowMs();
      chunks.push(chunk);
      buffered += chunk.length;
      if (buffered < 4) return;
      const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
      let off = 0;
      while (buf.length - off >= 4) {
        const len = buf.readUInt32LE(off);
        if (buf.length - off < 4 + len) break;
        const msg = JSON.parse(buf.toString('utf8', off + 4, off + 4 + len));
        msg._at = at;
        msg._bytes = 4 + len;
        this.bytes += 4 + len;
        off += 4 + len;
        this.push(msg);
      }
      const rest = buf.subarray(off);
      chunks = rest.length ? [rest] : [];
      buffered = rest.length;
    });
  }
}

function sendNative(child, message) {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  child.stdin.write(Buffer.concat([head, body]));
}

function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const python = requireProjectPython();
  const launcher = path.join(ROOT, 'dist/host/moe-devtools-host');
  if (!fs.existsSync(launcher)) {
    console.error(`bench_host_relay: ${path.relative(ROOT, launcher)} is missing; run \`npm run build\` first.`);
    process.exit(1);
  }
  const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-relay-'));
  const env = { ...process.env, MOE_DEVTOOLS_SOCKET_DIR: socketDir };

  // --- the job ---
  const jobArgs = [path.join(ROOT, 'scripts/bench_relay_job.py'), '--model', opts.model, '--rate', String(opts.rate)];
  const job = spawn(python, jobArgs, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let jobErr = '';
  job.stderr.on('data', (d) => (jobErr += d));
  const jobLines = new JsonLines(job.stdout);
  const children = [job];
  const cleanup = () => children.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL'));
  process.on('exit', cleanup);

  try {
    const ready = await jobLines.wait((l) => l.ready, 120000, 'the job to start').catch((err) => {
      throw new Error(`${err.message}\n${jobErr.slice(-2000)}`);
    });
    const perPass = ready.assignments_per_pass;
    console.log(`host relay: job pid ${ready.pid}, ${ready.model} model, ${ready.layers} MoE layers x ${ready.experts} experts top-${ready.top_k}, ` +
      `hidden ${ready.hidden}, ${ready.tokens} tokens/pass = ${perPass} assignments/pass, paced to ${opts.rate.toExponential(2)} assignments/s`);

    // --- the host, with us as the browser ---
    const host = spawn(launcher, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(host);
    let hostErr = '';
    host.stderr.on('data', (d) => (hostErr += d));
    const frames = new NativeFrames(host.stdout);

    const rss = [];
    const sampleProc = () => {
      const s = readProc(host.pid);
      if (s) rss.push({ at: nowMs(), ...s });
    };
    sampleProc();
    const sampler = setInterval(sampleProc, 100);

    sendNative(host, { type: 'hello', version: 1 });
    await frames.wait((m) => m.type === 'hello', 10000, "the host's hello");
    // The launcher execs node, so by now the pid we sample is the host itself.
    const cmdline = fs.readFileSync(`/proc/${host.pid}/cmdline`, 'utf8');
    if (!cmdline.includes('host.cjs')) console.warn(`  (pid ${host.pid} is not the node process itself: ${cmdline.replace(/\0/g, ' ')})`);
    const attachStart = nowMs();
    sendNative(host, { type: 'attach', pid: ready.pid });
    const attached = await frames.wait((m) => (m.type === 'attached' || m.type === 'error') && m.pid === ready.pid, 30000, 'attached');
    if (attached.type === 'error') throw new Error(`attach failed: ${attached.code}: ${attached.message}`);
    console.log(`  attached by ${attached.method} in ${attached.ms} ms (${(nowMs() - attachStart).toFixed(0)} ms round trip)`);

    // Let the first updates through (hooks going in, first snapshots), then measure.
    await frames.wait((m) => m.type === 'update' && m.pid === ready.pid, 10000, 'the first update');
    await sleep(opts.settle * 1000);
    const winStart = nowMs();
    const firstIndex = frames.items.length;
    const cpuStart = readProc(host.pid);
    const bytesStart = frames.bytes;
    console.log(`  measuring for ${opts.duration} s ...`);
    await sleep(opts.duration * 1000);
    const winEnd = nowMs();
    const cpuEnd = readProc(host.pid);
    const bytesWindow = frames.bytes - bytesStart;
    const inWindow = frames.items.slice(firstIndex).filter((m) => m._at <= winEnd);

    // --- detach, then the host must leave on stdin EOF ---
    const detachIndex = frames.items.length;
    const jobIndex = jobLines.items.length;
    const detachStart = nowMs();
    sendNative(host, { type: 'detach', pid: ready.pid });
    const detached = await frames.wait((m) => m.type === 'detached' && m.pid === ready.pid, 10000, 'detached', detachIndex);
    const detachMs = nowMs() - detachStart;
    let hooksAfter = null;
    try {
      const line = await jobLines.wait((l) => l.t && l.hooks === 0, 5000, 'the job to report no hooks', jobIndex);
      hooksAfter = line.hooks;
    } catch {
      hooksAfter = jobLines.items.at(-1)?.hooks ?? null;
    }
    const finalUpdate = frames.items.slice(detachIndex).filter((m) => m.type === 'update' && m.pid === ready.pid).at(-1);

    const eofStart = nowMs();
    host.stdin.end();
    const hostExit = await Promise.race([exited(host), sleep(10000).then(() => null)]);
    const exitMs = nowMs() - eofStart;
    clearInterval(sampler);

    job.kill('SIGTERM');
    const done = await jobLines.wait((l) => l.done, 15000, "the job's summary").catch(() => null);
    await Promise.race([exited(job), sleep(5000)]);

    // --- figures ---
    const updates = inWindow.filter((m) => m.type === 'update' && m.pid === ready.pid);
    if (updates.length < 2) throw new Error(`only ${updates.length} updates arrived in ${opts.duration} s`);
    const sum = (a) => a.reduce((x, y) => x + y, 0);
    const first = updates[0];
    const last = updates.at(-1);
    const routedFirst = sum(first.counts);
    const routedLast = sum(last.counts);
    const panelRate = (routedLast - routedFirst) / (last.ts - first.ts);
    // the job's own rate over the same probe-clock interval, from its own cumulative reports
    const jobReports = jobLines.items.filter((l) => l.t && typeof l.assignments === 'number');
    const at = (t) => {
      // cumulative assignments at time t, interpolated between the job's reports
      let prev = null;
      for (const r of jobReports) {
        if (r.t >= t) {
          if (!prev) return r.assignments;
          return prev.assignments + ((r.assignments - prev.assignments) * (t - prev.t)) / (r.t - prev.t);
        }
        prev = r;
      }
      return prev?.assignments ?? NaN;
    };
    const jobRate = (at(last.ts) - at(first.ts)) / (last.ts - first.ts);
    const rateRatio = panelRate / jobRate;
    const exactAll = [...frames.items.filter((m) => m.type === 'update' && m.pid === ready.pid)].every((m) => sum(m.counts) === m.passes * perPass);

    const latencies = updates.map((m) => m._at - m.ts * 1000).sort((a, b) => a - b);
    const p50 = quantile(latencies, 0.5);
    const p99 = quantile(latencies, 0.99);
    const max = latencies.at(-1);
    const windowS = (winEnd - winStart) / 1000;
    const updatesPerS = updates.length / windowS;
    const bytesPerS = bytesWindow / windowS;
    const byType = {};
    for (const m of inWindow) {
      const t = (byType[m.type] ??= { count: 0, bytes: 0 });
      t.count += 1;
      t.bytes += m._bytes;
    }
    const rssMax = Math.max(...rss.map((s) => s.rssBytes));
    const rssEnd = rss.at(-1)?.rssBytes ?? NaN;
    const hostCpu = cpuStart && cpuEnd ? (cpuEnd.cpuS - cpuStart.cpuS) / windowS : null;
    const cleanDetach = detached.reason === 'requested' && hooksAfter === 0;
    const cleanExit = hostExit !== null && hostExit.code === 0;
    const droppedLast = last.dropped;

    const MB = 1024 * 1024;
    console.log(`  job's own rate:        ${(jobRate / 1e6).toFixed(3)} M assignments/s (the job reports ${done ? (done.rate / 1e6).toFixed(3) : '?'} M/s over its whole run, busy ${done ? (100 * done.busy_fraction).toFixed(0) : '?'} %)`);
    console.log(`  panel-side rate:       ${(panelRate / 1e6).toFixed(3)} M assignments/s (ratio ${rateRatio.toFixed(4)}), counts exactly passes x ${perPass} in every update: ${exactAll ? 'yes' : 'NO'}`);
    console.log(`  updates:               ${updates.length} in ${windowS.toFixed(1)} s = ${updatesPerS.toFixed(1)}/s, ${(bytesPerS / 1024).toFixed(1)} KiB/s from the host (${Object.entries(byType).map(([k, v]) => `${k} ${v.count}`).join(', ')}); probe snapshots dropped/coalesced: ${droppedLast}`);
    console.log(`  latency ts -> panel:   p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${max.toFixed(1)} ms`);
    console.log(`  host:                  RSS max ${(rssMax / MB).toFixed(1)} MiB (end ${(rssEnd / MB).toFixed(1)} MiB), CPU ${hostCpu === null ? '?' : (100 * hostCpu).toFixed(1)} % of a core`);
    console.log(`  detach:                ${detached.reason} in ${detachMs.toFixed(0)} ms, job hooks after: ${hooksAfter}; final update passes ${finalUpdate?.passes ?? '-'}`);
    console.log(`  stdin EOF:             host ${hostExit ? `exited with code ${hostExit.code}${hostExit.signal ? ` (signal ${hostExit.signal})` : ''}` : 'did NOT exit'} in ${exitMs.toFixed(0)} ms`);
    if (!cleanExit && hostErr) console.log(`  host stderr: ${hostErr.slice(-1000)}`);

    const result = {
      benchmark: 'host_relay',
      title: 'Host relay (probe -> host -> native messaging)',
      description: `A job routing ${(opts.rate / 1e6).toFixed(2)} M token-expert assignments/s (${ready.model} model, ` +
        `${ready.layers} MoE layers, ${ready.tokens} tokens/pass) attached through dist/host/moe-devtools-host, ` +
        `whose native-messaging output this script reads in the browser's place for ${opts.duration} s; ` +
        'latency is from the probe\'s snapshot time (end of a pass) to reading the update.',
      quick: opts.quick,
      config: {
        duration_s: opts.duration, settle_s: opts.settle, target_rate: opts.rate, model: ready.model, layers: ready.layers,
        experts: ready.experts, top_k: ready.top_k, hidden: ready.hidden, tokens_per_pass: ready.tokens,
        assignments_per_pass: perPass, job_threads: ready.threads, torch: ready.torch, node: process.version,
      },
      attach_ms: attached.ms,
      job_rate: jobRate,
      job_rate_whole_run: done?.rate ?? null,
      job_busy_fraction: done?.busy_fraction ?? null,
      panel_rate: panelRate,
      rate_ratio: rateRatio,
      counts_exact: exactAll,
      updates: updates.length,
      window_s: windowS,
      updates_per_s: updatesPerS,
      bytes_per_s: bytesPerS,
      by_type: byType,
      dropped_snapshots: droppedLast,
      latency_ms: { p50, p99, max, n: latencies.length },
      host_rss_max_bytes: rssMax,
      host_rss_end_bytes: rssEnd,
      host_cpu_fraction: hostCpu,
      detach: { reason: detached.reason, ms: detachMs, job_hooks_after: hooksAfter, final_passes: finalUpdate?.passes ?? null },
      host_exit: { code: hostExit?.code ?? null, signal: hostExit?.signal ?? null, ms: exitMs },
      metrics: [
        { metric: "job's routing rate", value: jobRate, unit: 'assignments/s', target: `>= ${(TARGET_RATE * (1 - RATE_TOLERANCE)) / 1e6} M/s`,
          pass: jobRate >= TARGET_RATE * (1 - RATE_TOLERANCE), note: 'the load the relay had to keep up with (job paced to 1M/s)' },
        { metric: 'panel-side routing rate', value: panelRate, unit: 'assignments/s', target: `job's rate +/- ${RATE_TOLERANCE * 100} %`,
          pass: Math.abs(rateRatio - 1) <= RATE_TOLERANCE, note: `ratio ${rateRatio.toFixed(4)}; counts exact in every update: ${exactAll ? 'yes' : 'no'}` },
        { metric: 'counts exact (passes x assignments/pass)', value: exactAll ? 'yes' : 'no', unit: '', target: 'yes', pass: exactAll },
        { metric: 'update messages', value: updatesPerS, unit: '/s', digits: 1, note: `${updates.length} in ${windowS.toFixed(1)} s` },
        { metric: 'host -> browser bytes', value: bytesPerS / 1024, unit: 'KiB/s', digits: 1, note: Object.entries(byType).map(([k, v]) => `${k} ${v.count}`).join(', ') },
        { metric: 'latency snapshot -> panel p50', value: p50, unit: 'ms', digits: 1 },
        { metric: 'latency snapshot -> panel p99', value: p99, unit: 'ms', digits: 1, target: `< ${TARGET_P99_MS} ms`, pass: p99 < TARGET_P99_MS },
        { metric: 'latency snapshot -> panel max', value: max, unit: 'ms', digits: 1 },
        { metric: 'host RSS max', value: rssMax / MB, unit: 'MiB', digits: 1, note: `CPU ${hostCpu === null ? '?' : (100 * hostCpu).toFixed(1)} % of a core` },
        { metric: 'detach removes the hooks', value: cleanDetach ? 'yes' : 'no', unit: '', target: 'yes', pass: cleanDetach, note: `${detachMs.toFixed(0)} ms` },
        { metric: 'host exits cleanly on stdin EOF', value: cleanExit ? 'yes' : 'no', unit: '', target: 'yes', pass: cleanExit, note: `code ${hostExit?.code ?? '-'} in ${exitMs.toFixed(0)} ms` },
      ],
    };
    if (opts.json) {
      fs.mkdirSync(path.dirname(path.resolve(opts.json)), { recursive: true });
      fs.writeFileSync(opts.json, JSON.stringify(result, null, 2));
    }
  } finally {
    cleanup();
    fs.rmSync(socketDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`bench_host_relay: ${err.stack ?? err}`);
  process.exit(1);
});
