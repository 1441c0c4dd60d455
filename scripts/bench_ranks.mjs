// Distributed-job benchmark: a job of --ranks ranks (8), each a real PyTorch MoE model of --layers
// (64) MoE layers x --experts (256) experts (scripts/bench_panel_job.py, top-8, 32 tokens per
// pass, attachable through its library probe with a 10 ms flush), started as a launcher would
// (RANK, WORLD_SIZE, MASTER_ADDR/PORT and TORCHELASTIC_RUN_ID in each environment), each paced at
// --rate passes/s (6): the host receives rate x ranks snapshots a second (48, more than its 30 ticks) and sends the panel one
// update of the whole job (the sum over ranks, and each rank's figures) at each 30 Hz tick.
//
// 1. The panel, in real DevTools (1280 x 800, as scripts/bench_panel.mjs): "Attach all" on the
//    job's entry, --warmup seconds, then for each of --views a performance trace of --seconds.
//    Frame work = main-thread CPU time of the panel renderer's tasks in each Chrome animation frame
//    (scripts/lib/panel-trace.mjs; definition at the top of bench_panel.mjs); target p95 <= 16 ms
//    in every view. Also: the updates the panel received per second (its status bar's counter).
//    Meanwhile the native host's CPU time (utime + stime of /proc/PID/stat) and resident memory
//    are sampled: per rank = total / ranks.
// 2. The relay: the browser is closed (every rank detached), `moe-devtools relay` is started for
//    the job on this machine, and a native host (dist/host, over stdio as Chrome runs it) connects
//    to it (connect-relay) and merges what it relays, for --relay-seconds. The relay's and that
//    host's CPU and memory, and the updates the host sends on, are measured the same way.
//
//   node scripts/bench_ranks.mjs [--quick] [--ranks N] [--layers L] [--experts E] [--rate R]
//       [--views overview,load,heatmap,ranks] [--seconds S] [--warmup S] [--relay-seconds S] [--json OUT]
//
// --quick: 2 s per view, 5 s of warm-up and 5 s of relay. Needs `npm run build` first.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { launchBrowser, makeProfile, openMoEPanel, undockDevTools } from './lib/devtools-harness.mjs';
import { FRAME_BUDGET_MS, analyzeTrace, stats } from './lib/panel-trace.mjs';
import { ROOT, requireProjectPython } from './python-env.mjs';

const MIN_UPDATE_HZ = 27; // the host relays <= 30 updates/s (see bench_panel.mjs)
const DEVTOOLS_SIZE = { width: 1280, height: 800 };
const TRACE_CATEGORIES = ['devtools.timeline', 'disabled-by-default-devtools.timeline', 'disabled-by-default-devtools.timeline.frame', 'v8.execute', '__metadata'];
const VIEW_LABEL = { overview: 'Overview', load: 'Load', heatmap: 'Heatmap', tokens: 'Tokens', timeline: 'Timeline', coactivation: 'Co-activation', profiler: 'Profiler', ranks: 'Ranks' };
const CLK_TCK = 100; // Linux USER_HZ: /proc/PID/stat times are in 1/100 s
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const f1 = (v) => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(1));

function parseArgs(argv) {
  const opts = { quick: false, ranks: 8, layers: 64, experts: 256, topK: 8, tokens: 32, rate: 6, views: ['overview', 'load', 'heatmap', 'ranks'], seconds: null, warmup: null, relaySeconds: null, json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--quick') opts.quick = true;
    else if (a === '--ranks') opts.ranks = Number(next());
    else if (a === '--layers') opts.layers = Number(next());
    else if (a === '--experts') opts.experts = Number(next());
    else if (a === '--rate') opts.rate = Number(next());
    else if (a === '--views') opts.views = next().split(',').filter(Boolean);
    else if (a === '--seconds') opts.seconds = Number(next());
    else if (a === '--warmup') opts.warmup = Number(next());
    else if (a === '--relay-seconds') opts.relaySeconds = Number(next());
    else if (a === '--json') opts.json = next();
    else if (a === '--help' || a === '-h') {
      console.log('usage: node scripts/bench_ranks.mjs [--quick] [--ranks N] [--layers L] [--experts E] [--rate R] [--views overview,load,heatmap,ranks] [--seconds S] [--warmup S] [--relay-seconds S] [--json OUT]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  opts.seconds ??= opts.quick ? 2 : 5;
  opts.warmup ??= opts.quick ? 5 : 30;
  opts.relaySeconds ??= opts.quick ? 5 : 15;
  return opts;
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** CPU seconds (user + system) and resident bytes of a process, from /proc. */
function usage(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpu = (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
    return { cpu, rss };
  } catch {
    return null;
  }
}

/** Samples a process's CPU share and peak memory between start() and stop(). */
function meter(pid) {
  let first = null;
  let peak = 0;
  const t0 = Date.now();
  const timer = setInterval(() => {
    const u = usage(pid);
    if (u) peak = Math.max(peak, u.rss);
  }, 250);
  first = usage(pid);
  return () => {
    clearInterval(timer);
    const last = usage(pid);
    const seconds = (Date.now() - t0) / 1000;
    return { cpuShare: first && last ? (last.cpu - first.cpu) / seconds : NaN, peakRss: Math.max(peak, last?.rss ?? 0), seconds };
  };
}

/** The ranks: bench_panel_job.py in N processes with the launcher's environment. */
async function startRanks(opts) {
  const python = requireProjectPython();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-ranks-'));
  const port = await freePort();
  const runId = `bench-${process.pid}`;
  const children = [];
  for (let rank = 0; rank < opts.ranks; rank++) {
    const status = path.join(dir, `rank${rank}.json`);
    children.push(spawn(python, [path.join(ROOT, 'scripts/bench_panel_job.py'), '--layers', String(opts.layers), '--experts', String(opts.experts),
      '--top-k', String(opts.topK), '--tokens', String(opts.tokens), '--rate', String(opts.rate), '--seed', String(rank), '--status', status], {
      cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, OMP_NUM_THREADS: '1', RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: String(opts.ranks),
        MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), TORCHELASTIC_RUN_ID: runId },
    }));
  }
  let stderr = '';
  for (const c of children) c.stderr.on('data', (d) => (stderr = (stderr + d).slice(-3000)));
  const statusOf = (rank) => {
    try {
      return JSON.parse(fs.readFileSync(path.join(dir, `rank${rank}.json`), 'utf8'));
    } catch {
      return null;
    }
  };
  const job = {
    children, key: `torch:${runId}@127.0.0.1:${port}`,
    passesPerS: () => children.map((_, r) => statusOf(r)?.passes_per_s ?? NaN),
    stop: async () => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? null : new Promise((r) => c.once('exit', r)))));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + 300_000;
  while (children.some((_, r) => !statusOf(r))) {
    if (children.some((c) => c.exitCode !== null)) throw new Error(`a rank exited early: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`the ranks did not start within 300 s: ${stderr}`);
    await sleep(500);
  }
  return job;
}

/** The native host Chrome started for this browser: a host.cjs process descending from it. */
function findHost(browserPid) {
  const parentOf = (pid) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      return 0;
    }
  };
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (!cmd.includes('dist/host/host.cjs')) continue;
    for (let p = Number(name), hops = 0; p > 1 && hops < 10; p = parentOf(p), hops++) if (p === browserPid) return Number(name);
  }
  return null;
}

async function panelCounters(panel) {
  return panel.evaluate(() => {
    const text = document.querySelector('[data-testid="statusbar"]')?.textContent ?? '';
    const updates = /(\d+) updates/.exec(text);
    return { t: Date.now(), updates: updates ? Number(updates[1]) : null, visibility: document.visibilityState };
  });
}

async function showView(panel, view) {
  await panel.$eval(`[data-testid="tab-${view}"]`, (el) => el.click());
  await panel.waitForFunction((v) => document.querySelector(`[data-testid="view-${v}"]`), { polling: 100, timeout: 30_000 }, view);
}

async function panelPhase(opts, job) {
  const profileDir = makeProfile('moe-bench-ranks-profile-');
  let browser;
  const views = [];
  let hostUse = null;
  try {
    browser = await launchBrowser({ userDataDir: profileDir });
    const { devtools, panel } = await openMoEPanel(browser);
    await undockDevTools(devtools, DEVTOOLS_SIZE);
    await devtools.bringToFront();
    const button = await panel.waitForFunction((key) => document.querySelector(`[data-testid="dist-job"][data-job="${key}"] [data-testid^="attach-job-"]:not([disabled])`)?.getAttribute('data-testid'),
      { polling: 200, timeout: 60_000 }, job.key);
    const started = Date.now();
    await panel.$eval(`[data-testid="${await button.jsonValue()}"]`, (el) => el.click());
    await panel.waitForSelector('[data-testid="tab-ranks"]', { timeout: 60_000 });
    await showView(panel, 'ranks');
    await panel.waitForFunction((n) => document.querySelectorAll('[data-testid="rank-row"][data-status="attached"]').length === n, { polling: 100, timeout: 120_000 }, opts.ranks);
    const attachMs = Date.now() - started;
    const hostPid = findHost(browser.process().pid);
    if (!hostPid) throw new Error('could not find the native host process of the browser');
    console.log(`attached to ${opts.ranks} ranks through the panel in ${attachMs} ms; native host pid ${hostPid}; warming up ${opts.warmup} s`);
    await sleep(opts.warmup * 1000);
    const stopHost = meter(hostPid);
    for (const view of opts.views) {
      await showView(panel, view);
      await devtools.bringToFront();
      await sleep(1000);
      await devtools.tracing.start({ categories: TRACE_CATEGORIES });
      const c0 = await panelCounters(panel);
      await sleep(opts.seconds * 1000);
      const c1 = await panelCounters(panel);
      const buffer = await devtools.tracing.stop();
      const parsed = JSON.parse(Buffer.from(buffer).toString('utf8'));
      const trace = analyzeTrace(Array.isArray(parsed) ? parsed : parsed.traceEvents, false);
      const updatesPerS = (c1.updates - c0.updates) / ((c1.t - c0.t) / 1000);
      views.push({ view, updatesPerS, visibility: c1.visibility, trace });
      console.log(`-- ${VIEW_LABEL[view]}: ${updatesPerS.toFixed(1)} updates/s, ${trace.frames} frames; frame work p50 ${f1(trace.frameWork.p50)} p95 ${f1(trace.frameWork.p95)} ` +
        `p99 ${f1(trace.frameWork.p99)} max ${f1(trace.frameWork.max)} ms; busy (wall) p95 ${f1(trace.frameBusy.p95)} ms; worker ${(100 * trace.worker.cpuShare).toFixed(0)}% of a core`);
    }
    hostUse = stopHost();
    return { views, hostUse, attachMs, ranksPassesPerS: job.passesPerS() };
  } finally {
    await browser?.close().catch(() => {});
    fs.rmSync(profileDir, { recursive: true, force: true });
  }
}

/** A native host over stdio, as Chrome runs it: send requests, count what it says. */
function nativeHost() {
  const child = spawn(path.join(ROOT, 'dist/host/moe-devtools-host'), ['chrome-extension://bench/'], { stdio: ['pipe', 'pipe', 'ignore'] });
  let buffer = Buffer.alloc(0);
  const counts = {};
  const errors = [];
  child.stdout.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32LE(0)) {
      const n = buffer.readUInt32LE(0);
      const m = JSON.parse(buffer.subarray(4, 4 + n).toString('utf8'));
      buffer = buffer.subarray(4 + n);
      counts[m.type] = (counts[m.type] ?? 0) + 1;
      if (m.type === 'error') errors.push(m.message);
    }
  });
  const send = (m) => {
    const body = Buffer.from(JSON.stringify(m));
    const head = Buffer.alloc(4);
    head.writeUInt32LE(body.length);
    child.stdin.write(Buffer.concat([head, body]));
  };
  return { child, counts, errors, send };
}

async function relayPhase(opts, job) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-relay-'));
  const tokenFile = path.join(dir, 'relay.json');
  const relay = spawn(process.execPath, [path.join(ROOT, 'bin/moe-devtools.mjs'), 'relay', '--port', '0', '--token-file', tokenFile, '--job', job.key],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MOE_DEVTOOLS_PROBE_ROOT: path.join(ROOT, 'dist/host') } });
  let stderr = '';
  relay.stderr.on('data', (d) => (stderr = (stderr + d).slice(-3000)));
  const host = nativeHost();
  try {
    const deadline = Date.now() + 60_000;
    while (!fs.existsSync(tokenFile)) {
      if (relay.exitCode !== null || Date.now() > deadline) throw new Error(`the relay did not start: ${stderr}`);
      await sleep(100);
    }
    const { address, token } = JSON.parse(fs.readFileSync(tokenFile, 'utf8'));
    host.send({ type: 'hello', version: 1 });
    host.send({ type: 'connect-relay', address, token });
    while ((host.counts.ranks ?? 0) < opts.ranks) {
      if (Date.now() > deadline + 60_000) throw new Error(`the relay did not bring ${opts.ranks} ranks: ${host.errors.join('; ')} ${stderr}`);
      await sleep(200);
    }
    await sleep(3000); // let it settle
    const stopRelay = meter(relay.pid);
    const stopHost = meter(host.child.pid);
    const u0 = host.counts.update ?? 0;
    const t0 = Date.now();
    await sleep(opts.relaySeconds * 1000);
    const updatesPerS = ((host.counts.update ?? 0) - u0) / ((Date.now() - t0) / 1000);
    return { relay: stopRelay(), host: stopHost(), updatesPerS };
  } finally {
    host.child.stdin.end();
    relay.kill('SIGTERM');
    await new Promise((r) => (relay.exitCode !== null ? r() : relay.once('exit', r)));
    host.child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(ROOT, 'dist/extension/panel.js'))) throw new Error('dist/ is missing: run `npm run build` first.');
  const loadStart = os.loadavg()[0];
  console.log(`ranks benchmark: ${opts.ranks} ranks x ${opts.layers} layers x ${opts.experts} experts, top-${opts.topK}, ${opts.rate} passes/s per rank`);
  const job = await startRanks(opts);
  let panel;
  let relay;
  try {
    panel = await panelPhase(opts, job);
    relay = await relayPhase(opts, job);
  } finally {
    await job.stop();
  }
  const loadEnd = os.loadavg()[0];
  const MiB = (b) => b / 2 ** 20;
  const worst = panel.views.reduce((w, v) => (!w || v.trace.frameWork.p95 > w.trace.frameWork.p95 ? v : w), null);
  const slowest = panel.views.reduce((w, v) => (!w || v.updatesPerS < w.updatesPerS ? v : w), null);
  const all = stats(panel.views.flatMap((v) => v.trace.rawFrames.map((f) => f.cpu)));
  const size = `${opts.ranks} ranks x ${opts.layers} x ${opts.experts}`;
  const perRank = (x) => x / opts.ranks;
  const metrics = [
    { metric: `updates received by the panel (${size})`, value: slowest.updatesPerS, unit: '/s', digits: 1, target: `>= ${MIN_UPDATE_HZ} /s in every view`, pass: slowest.updatesPerS >= MIN_UPDATE_HZ,
      note: `lowest, in ${VIEW_LABEL[slowest.view]}; ranks at ${panel.ranksPassesPerS.map((x) => f1(x)).join(', ')} passes/s; attach to all ${opts.ranks} through the panel ${panel.attachMs} ms` },
    { metric: 'frame work p95, worst view (main-thread CPU)', value: worst.trace.frameWork.p95, unit: 'ms', digits: 1, target: `<= ${FRAME_BUDGET_MS} ms in every view`,
      pass: panel.views.every((v) => v.trace.frameWork.p95 <= FRAME_BUDGET_MS), note: `${VIEW_LABEL[worst.view]}; per view: ${panel.views.map((v) => `${VIEW_LABEL[v.view]} ${f1(v.trace.frameWork.p95)}`).join(', ')}` },
    { metric: 'frame work p50 / p99 / max, all views', value: `${f1(all.p50)} / ${f1(all.p99)} / ${f1(all.max)} ms`, unit: '', note: `${all.n} frames; load average ${loadStart.toFixed(1)} -> ${loadEnd.toFixed(1)} on ${os.cpus().length} cores` },
    { metric: 'native host CPU per rank (panel attached)', value: 100 * perRank(panel.hostUse.cpuShare), unit: '% of a core', digits: 2, note: `${(100 * panel.hostUse.cpuShare).toFixed(1)}% for all ${opts.ranks} ranks over ${panel.hostUse.seconds.toFixed(0)} s` },
    { metric: 'native host memory per rank (panel attached)', value: MiB(perRank(panel.hostUse.peakRss)), unit: 'MiB', digits: 1, note: `peak RSS ${MiB(panel.hostUse.peakRss).toFixed(0)} MiB for all (history included)` },
    { metric: 'relay CPU per rank', value: 100 * perRank(relay.relay.cpuShare), unit: '% of a core', digits: 2, note: `${(100 * relay.relay.cpuShare).toFixed(1)}% for all ${opts.ranks} ranks over ${relay.relay.seconds.toFixed(0)} s` },
    { metric: 'relay memory per rank', value: MiB(perRank(relay.relay.peakRss)), unit: 'MiB', digits: 1, note: `peak RSS ${MiB(relay.relay.peakRss).toFixed(0)} MiB for all` },
    { metric: 'native host CPU per rank (fed by the relay)', value: 100 * perRank(relay.host.cpuShare), unit: '% of a core', digits: 2,
      note: `merging what the relay sends; ${relay.updatesPerS.toFixed(1)} job updates/s sent on; peak RSS ${MiB(relay.host.peakRss).toFixed(0)} MiB` },
  ];
  console.log('\nSummary:');
  for (const m of metrics) {
    const value = typeof m.value === 'number' ? `${m.value.toFixed(m.digits ?? 1)} ${m.unit}` : m.value;
    console.log(`  ${m.metric}: ${value}${m.target ? `  (target ${m.target}: ${m.pass ? 'pass' : 'FAIL'})` : ''}${m.note ? ` -- ${m.note}` : ''}`);
  }
  const result = {
    benchmark: 'ranks', title: 'Distributed job (ranks)', quick: opts.quick,
    description: `${opts.ranks} rank processes of bench_panel_job.py (${opts.layers} MoE layers x ${opts.experts} experts each, ${opts.rate} passes/s each) attached through the panel's Attach all; frame work as in the panel benchmark; then the same ranks through \`moe-devtools relay\` and a native host connected to it`,
    config: { ...opts, loadAvgStart: loadStart, loadAvgEnd: loadEnd, cores: os.cpus().length },
    views: panel.views.map((v) => ({ view: v.view, updatesPerS: v.updatesPerS, frameWork: v.trace.frameWork, frameBusy: v.trace.frameBusy, workerCpuShare: v.trace.worker.cpuShare })),
    host: panel.hostUse, relay, metrics,
  };
  if (opts.json) {
    fs.mkdirSync(path.dirname(path.resolve(opts.json)), { recursive: true });
    fs.writeFileSync(opts.json, JSON.stringify(result, null, 2) + '\n');
  }
}

main().then(() => process.exit(0), (err) => {
  console.error(`bench_ranks: ${err.stack ?? err}`);
  process.exit(1);
});
