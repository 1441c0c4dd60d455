// Panel frame-time benchmark: the MoE panel in real DevTools, fed by a real job whose
// snapshots reach the panel 30 times a second, at three model sizes run one after another:
// 64 MoE layers x 512 experts, 64 x 256 (DeepSeek-V3-like) and 128 x 1024 (--sizes).
// The first two are held to the 16 ms target; the third is reported as measured.
//
// The job (scripts/bench_panel_job.py) is a user-written torch model the probe
// recognises (router nn.Linear(16, 512) + stacked `experts` per block, top-8, 32
// tokens per pass), paced at --rate passes/s (45) and attachable with a 10 ms probe
// flush interval, so the host (which relays at most 30 updates/s) has a fresh
// snapshot at nearly every tick. Chromium (headless by default) is launched with the
// unpacked extension by scripts/lib/devtools-harness.mjs, DevTools is opened on a tab
// and undocked into a 1280 x 800 window (a fixed panel size), the MoE panel is shown
// and attached through its own Attach button. The benchmark then waits --warmup
// seconds (125: the panel's timeline holds 3600 points, 2 minutes at 30 Hz, and every
// analysis carries it, so a full timeline is the steady state of a long session).
// Then, for each view (Overview, Load, Heatmap, Flow, 3D map, Layers, Tokens, Timeline,
// Co-activation, Profiler), it clicks the view's tab, lets it settle for a second and records a
// performance trace of --seconds (puppeteer's tracing on the DevTools page: Chrome
// traces every process; BENCH_PANEL_EXTRA_CATEGORIES=a,b adds trace categories).
//
// What a "frame" is here: Chrome's own animation frame, the unit of the Long Animation
// Frames API and of the Performance panel, read from the trace's `AnimationFrame`
// events (devtools.timeline) on the panel renderer's main thread (the renderer is found
// by the panel's URL in TracingStartedInBrowser; the panel is an out-of-process frame of
// the DevTools page, in the Extension Renderer). A frame begins with the first
// main-thread task after the previous rendering update (in practice: the task that
// receives an update message from the service worker, runs the store and the Preact
// render in its microtasks, or the worker's analysis reply) and ends when the rendering
// update that follows (style, layout, paint, commit) is done. Typically two tasks: the
// message (parse, store, render) and the rendering update; at most 5 times a second the
// frame also takes the analysis from the worker (deserialize, render the view), and
// canvas work (uPlot, heatmaps) lands in an effects task. Every top-level task that
// runs between the frame's start and its end counts, whatever it does (GC included).
// For every frame the benchmark reports:
//   - frame work: the main thread's CPU time in the frame's tasks (trace `tdur`,
//     thread time), i.e. the time the frame costs the main thread. This is the figure
//     held to the 16 ms target: on this shared 2-core machine the browser, the job,
//     the host and other people's processes compete for the CPU, and wall-clock task
//     durations there are mostly time spent descheduled (a task of 2 ms CPU can take
//     20 ms of wall time), which says nothing about the panel;
//   - frame busy time: the wall-clock time of the same tasks (what the machine gave);
//   - frame duration: Chrome's own duration (first task start to rendering end, idle
//     gaps included, as the Long Animation Frames API measures it).
// Target: p95 of frame work <= 16 ms in every view (one 60 Hz frame). p95 rather than
// max or p99: on a shared machine a single garbage collection or an unlucky time slice
// can push one frame in a hundred over, which shows as one dropped frame, not as jank;
// p99, max and the share of frames over 16 ms are reported beside it.
// Also reported: update messages per second received by the panel (its own counter,
// shown in the status bar) and the job's passes/s, to show that the panel really was
// fed 30 updates/s of 64 x 512 counts; frames presented per second and paint counts
// (proof that rendering happened: the DevTools document is brought to the front, and
// the benchmark checks that the panel document is visible); the analysis worker's CPU
// time (the DedicatedWorker thread of the panel's renderer) per update and its share
// of a core; where the main thread's time went (self time by trace event), and with
// --profile the JavaScript functions that took it (V8 sampling profiler in the trace).
//
//   node scripts/bench_panel.mjs [--quick] [--seconds S] [--sizes LxE,LxE,...] [--layers L --experts E]
//       [--top-k K] [--tokens N] [--rate PASSES_PER_S] [--views overview,load,...] [--profile] [--headful]
//       [--trace-dir DIR] [--warmup S] [--settle S] [--json OUT]
//
// --quick: 2 s per view instead of 5 and 3 s of warm-up instead of 125 (same sizes, but a
// short timeline, so Load and Timeline frames are lighter than in a long session).
// --layers L --experts E: that one size only. Needs `npm run build` first.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { attachThroughPanel, clickInPanel, launchBrowser, makeProfile, openMoEPanel, undockDevTools } from './lib/devtools-harness.mjs';
import { ROOT, requireProjectPython } from './python-env.mjs';
import { FRAME_BUDGET_MS, analyzeTrace, stats } from './lib/panel-trace.mjs';

const TARGET_UPDATE_HZ = 30;
// The host relays at most 30 updates/s, each as soon as a new snapshot waits (native-host's
// UpdatePacer); a stall of its event loop on a busy machine costs an update now and then. 90 % is
// enough to call the load "30 Hz"; the exact rate is reported.
const MIN_UPDATE_HZ = 27;
const DEVTOOLS_SIZE = { width: 1280, height: 800 };
const ALL_VIEWS = ['overview', 'load', 'heatmap', 'flow', 'activity', 'layers', 'tokens', 'timeline', 'coactivation', 'profiler', 'experts'];
const VIEW_LABEL = {
  overview: 'Overview', load: 'Load', heatmap: 'Heatmap', flow: 'Flow', activity: '3D map', layers: 'Layers', tokens: 'Tokens', timeline: 'Timeline',
  coactivation: 'Co-activation', profiler: 'Profiler', experts: 'Experts',
};
/** Sizes run by default: [layers, experts, held to the frame budget]. */
const DEFAULT_SIZES = [[64, 512, true], [64, 256, true], [128, 1024, false]];

const TRACE_CATEGORIES = [
  'devtools.timeline',
  'disabled-by-default-devtools.timeline',
  'disabled-by-default-devtools.timeline.frame',
  'v8.execute',
  'blink.user_timing',
  '__metadata',
];

function parseArgs(argv) {
  const opts = {
    quick: false, seconds: null, layers: null, experts: null, sizes: null, topK: 8, tokens: 32, rate: 45, views: ALL_VIEWS,
    profile: false, headless: true, traceDir: null, json: null, settle: 1, warmup: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--quick') opts.quick = true;
    else if (a === '--seconds') opts.seconds = Number(next());
    else if (a === '--layers') opts.layers = Number(next());
    else if (a === '--sizes') opts.sizes = next().split(',').filter(Boolean).map((x) => {
      const m = /^(\d+)x(\d+)$/.exec(x);
      if (!m) throw new Error(`--sizes takes LAYERSxEXPERTS,... (got ${x})`);
      return [Number(m[1]), Number(m[2]), Number(m[1]) * Number(m[2]) <= 64 * 512];
    });
    else if (a === '--experts') opts.experts = Number(next());
    else if (a === '--top-k') opts.topK = Number(next());
    else if (a === '--tokens') opts.tokens = Number(next());
    else if (a === '--rate') opts.rate = Number(next());
    else if (a === '--views') opts.views = next().split(',').filter(Boolean);
    else if (a === '--profile') opts.profile = true;
    else if (a === '--headful') opts.headless = false;
    else if (a === '--trace-dir') opts.traceDir = next();
    else if (a === '--settle') opts.settle = Number(next());
    else if (a === '--warmup') opts.warmup = Number(next());
    else if (a === '--json') opts.json = next();
    else if (a === '--help' || a === '-h') {
      console.log('usage: node scripts/bench_panel.mjs [--quick] [--seconds S] [--sizes 64x512,64x256,128x1024] [--layers L --experts E]\n' +
        `  [--top-k K] [--tokens N] [--rate PASSES_PER_S] [--views ${ALL_VIEWS.join(',')}] [--profile] [--headful]\n` +
        '  [--trace-dir DIR] [--settle S] [--warmup S] [--json OUT]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  for (const v of opts.views) if (!ALL_VIEWS.includes(v)) throw new Error(`unknown view ${v} (views: ${ALL_VIEWS.join(', ')})`);
  if (opts.seconds === null) opts.seconds = opts.quick ? 2 : 5;
  if ((opts.layers === null) !== (opts.experts === null)) throw new Error('--layers and --experts go together');
  if (opts.layers !== null) opts.sizes = [[opts.layers, opts.experts, opts.layers * opts.experts <= 64 * 512]];
  opts.sizes ??= DEFAULT_SIZES;
  // The panel's timeline keeps 3600 points (2 minutes at 30 Hz) and every analysis carries it:
  // the full run warms up until it is full, so that the figures are those of a long session.
  if (opts.warmup === null) opts.warmup = opts.quick ? 3 : 125;
  return opts;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------
// The job

async function startJob(opts) {
  const python = requireProjectPython();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-panel-'));
  const status = path.join(dir, 'status.json');
  const args = [path.join(ROOT, 'scripts/bench_panel_job.py'), '--layers', String(opts.layers), '--experts', String(opts.experts),
    '--top-k', String(opts.topK), '--tokens', String(opts.tokens), '--rate', String(opts.rate), '--status', status];
  const child = spawn(python, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const job = {
    pid: child.pid,
    child,
    status: () => {
      try {
        return JSON.parse(fs.readFileSync(status, 'utf8'));
      } catch {
        return null;
      }
    },
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    }),
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
  const deadline = Date.now() + 120_000;
  while (!job.status()) {
    if (child.exitCode !== null) throw new Error(`the job exited early (${child.exitCode}): ${stderr}`);
    if (Date.now() > deadline) {
      await job.stop();
      throw new Error(`the job did not start within 120 s: ${stderr}`);
    }
    await sleep(200);
  }
  return job;
}

// ---------------------------------------------------------------------------------
// Reading the panel

/** The panel's own counters, from its status bar: updates received (store) and passes. */
async function panelCounters(panel) {
  return panel.evaluate(() => {
    const bar = document.querySelector('[data-testid="statusbar"]');
    const text = bar ? bar.textContent : '';
    const updates = /(\d+) updates/.exec(text);
    const dropped = /(\d+) dropped/.exec(text);
    const passes = document.querySelector('[data-testid="passes"]');
    return {
      t: Date.now(),
      updates: updates ? Number(updates[1]) : null,
      dropped: dropped ? Number(dropped[1]) : null,
      passes: passes ? Number(/\d+/.exec(passes.textContent)?.[0]) : null,
      visibility: document.visibilityState,
    };
  });
}

/** Click a view's tab and wait until it shows (generous: a heavy view can keep the main thread busy). */
async function showView(panel, view) {
  for (let attempt = 0; ; attempt++) {
    await panel.click(`[data-testid="tab-${view}"]`);
    try {
      await panel.waitForFunction((v) => document.querySelector(`[data-testid="view-${v}"]`), { polling: 100, timeout: 30_000 }, view);
      return;
    } catch (err) {
      if (attempt >= 2) throw new Error(`the ${view} view did not show after 3 clicks: ${err.message}`);
    }
  }
}

// ---------------------------------------------------------------------------------

const f1 = (v) => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(1));
const pct = (v) => (v === null || v === undefined || !Number.isFinite(v) ? '-' : `${(100 * v).toFixed(0)}%`);

function printView(v) {
  const r = v.trace;
  console.log(`\n-- ${VIEW_LABEL[v.view]}: ${v.updatesPerS.toFixed(1)} updates/s received (${v.snapshotsCoalesced} snapshots coalesced on the way), job ${f1(v.jobPassesPerS)} passes/s, ` +
    `${r.frames} frames (${(r.frames / r.spanS).toFixed(1)}/s), ${r.paints} paints, ${r.presented} presented, document ${v.visibility}`);
  const row = (label, s) => console.log(`   ${label.padEnd(34)} p50 ${f1(s.p50).padStart(6)}  p95 ${f1(s.p95).padStart(6)}  p99 ${f1(s.p99).padStart(6)}  max ${f1(s.max).padStart(6)} ms   >16 ms ${pct(s.over16).padStart(4)}`);
  row('frame work (main-thread CPU)', r.frameWork);
  row('frame busy time (wall, tasks)', r.frameBusy);
  row('frame duration (Chrome, wall)', r.frameDuration);
  row('main-thread task CPU', r.taskCpu);
  console.log(`   main thread ${pct(r.mainCpuShare)} of a core; worker ${pct(r.worker.cpuShare)} of a core, ${f1(v.workerMsPerUpdate)} ms CPU per update; ` +
    `${r.longTasksWall50} tasks over 50 ms wall`);
  console.log(`   main-thread self time: ${r.mainSelf.slice(0, 6).map((s) => `${s.name} ${s.cpuMs.toFixed(0)} ms`).join(', ')}`);
  if (r.mainFunctions) console.log(`   main-thread JS (sampled): ${r.mainFunctions.slice(0, 8).map((s) => `${s.name} ${s.ms.toFixed(0)} ms`).join('; ')}`);
  if (r.workerFunctions) console.log(`   worker JS (sampled): ${r.workerFunctions.slice(0, 6).map((s) => `${s.name} ${s.ms.toFixed(0)} ms`).join('; ')}`);
}

/** One model size: start its job, attach through the panel, warm up, trace every view. */
async function runSize(opts) {
  const loadStart = os.loadavg()[0];
  console.log(`\n== panel benchmark: ${opts.layers} layers x ${opts.experts} experts, top-${opts.topK}, ${opts.tokens} tokens/pass, ` +
    `job paced at ${opts.rate} passes/s; ${opts.seconds} s traced per view (${opts.views.join(', ')})`);
  const job = await startJob(opts);
  const profileDir = makeProfile('moe-bench-panel-profile-');
  let browser;
  const views = [];
  let setup = {};
  try {
    browser = await launchBrowser({ userDataDir: profileDir, headless: opts.headless });
    const { devtools, panel } = await openMoEPanel(browser);
    // DevTools in a window of its own, so the panel's size is fixed (1280 x 800, less DevTools' chrome).
    await undockDevTools(devtools, DEVTOOLS_SIZE);
    await devtools.bringToFront();
    await attachThroughPanel(panel, job.pid, 60_000);
    await panel.waitForSelector('[data-testid="view-overview"]', { timeout: 60_000 });
    // Warm up: let the rates settle (job, host, panel) before measuring.
    const warm0 = await panelCounters(panel);
    console.log(`attached to pid ${job.pid}; warming up for ${opts.warmup} s`);
    await sleep(opts.warmup * 1000);
    const warm1 = await panelCounters(panel);
    setup = {
      jobPid: job.pid, panelViewport: await panel.evaluate(() => [innerWidth, innerHeight]), warmupUpdatesPerS: (warm1.updates - warm0.updates) / ((warm1.t - warm0.t) / 1000), visibility: warm1.visibility,
      analyzer: await panel.evaluate(() => document.documentElement.dataset.analyzer ?? null),
      // how host messages reach the panel: 'channel' (structured clones) or 'port' (JSON); see panels/host-link.ts
      transport: await panel.evaluate(() => document.documentElement.dataset.transport ?? null),
    };
    console.log(`warm-up: ${setup.warmupUpdatesPerS.toFixed(1)} updates/s; panel ${setup.panelViewport.join(" x ")} px, document ${warm1.visibility}; analyzer in ${setup.analyzer}; host messages over ${setup.transport ?? 'the port (JSON)'}`);
    if (opts.traceDir) fs.mkdirSync(opts.traceDir, { recursive: true });

    // The Experts view is measured at the sizes held to the frame budget only: at 128 x 1024 the
    // weight analysis alone is two 1024 x 1024 matrices per layer (about 2.4 GB of JSON through
    // native messaging, 1 GiB held in the panel), not what this benchmark is after.
    const shownViews = opts.held ? opts.views : opts.views.filter((v) => v !== 'experts');
    if (shownViews.length < opts.views.length) console.log('Experts view not measured at this size (only at the sizes held to the frame budget)');
    for (const view of shownViews) {
      await showView(panel, view);
      if (view === 'experts') {
        // measured with every layer's expert-weight analysis loaded (layers x experts x experts similarities, twice)
        await clickInPanel(panel, '[data-testid="experts-analyze"]');
        await panel.waitForSelector('[data-testid="experts-cost"]', { timeout: 300000 });
      }
      await devtools.bringToFront();
      await sleep(opts.settle * 1000);
      const categories = [...(opts.profile ? [...TRACE_CATEGORIES, 'disabled-by-default-v8.cpu_profiler'] : TRACE_CATEGORIES), ...(process.env.BENCH_PANEL_EXTRA_CATEGORIES ?? '').split(',').filter(Boolean)];
      await devtools.tracing.start({ categories });
      const c0 = await panelCounters(panel);
      const s0 = job.status();
      await sleep(opts.seconds * 1000);
      const c1 = await panelCounters(panel);
      const s1 = job.status();
      const buffer = await devtools.tracing.stop();
      if (opts.traceDir) fs.writeFileSync(path.join(opts.traceDir, `panel-${opts.layers}x${opts.experts}-${view}.json`), buffer);
      const parsed = JSON.parse(Buffer.from(buffer).toString('utf8'));
      const events = Array.isArray(parsed) ? parsed : parsed.traceEvents;
      const trace = analyzeTrace(events, opts.profile);
      if (c0.updates === null || c1.updates === null) throw new Error("could not read the panel's update counter from its status bar");
      const dt = (c1.t - c0.t) / 1000;
      const updates = c1.updates - c0.updates;
      const jobPassesPerS = s0 && s1 && s1.time > s0.time ? (s1.passes - s0.passes) / (s1.time - s0.time) : s1?.passes_per_s ?? null;
      const v = {
        view, seconds: dt, updates, updatesPerS: updates / dt, passesShown: c1.passes - c0.passes,
        snapshotsCoalesced: c1.dropped - c0.dropped,
        jobPassesPerS, jobMsPerPass: s1?.ms_per_pass ?? null, visibility: c1.visibility,
        workerMsPerUpdate: updates > 0 ? trace.worker.cpuMs / (updates * (trace.spanS / dt)) : null,
        trace,
      };
      views.push(v);
      printView(v);
    }
  } finally {
    await browser?.close().catch(() => {});
    await job.stop();
    job.cleanup();
    fs.rmSync(profileDir, { recursive: true, force: true });
  }

  return summarize(opts, views, setup, loadStart);
}

/** The figures of one size, printed, as benchmark metrics (held to the targets when `held`). */
function summarize(opts, views, setup, loadStart) {
  const held = opts.held;
  const all = (key) => stats(views.flatMap((v) => v.trace.rawFrames.map((f) => f[key])));
  const work = all('cpu');
  const busy = all('busy');
  const duration = all('duration');
  const worst = views.reduce((w, v) => (!w || (v.trace.frameWork.p95 ?? 0) > (w.trace.frameWork.p95 ?? 0) ? v : w), null);
  const totalUpdates = views.reduce((s, v) => s + v.updates, 0);
  const totalSeconds = views.reduce((s, v) => s + v.seconds, 0);
  const updateRate = totalUpdates / totalSeconds;
  const slowest = views.reduce((w, v) => (!w || v.updatesPerS < w.updatesPerS ? v : w), null);
  const minRate = slowest?.updatesPerS ?? NaN;
  const workerPerUpdate = views.map((v) => v.workerMsPerUpdate).filter((x) => x !== null);
  const workerShare = views.reduce((s, v) => s + v.trace.worker.cpuShare, 0) / views.length;
  const jobRate = views.reduce((s, v) => s + (v.jobPassesPerS ?? 0), 0) / views.length;
  const coalesced = views.reduce((s, v) => s + v.snapshotsCoalesced, 0);
  const rendering = views.every((v) => v.trace.paints > 0 && v.visibility === 'visible');
  const loadEnd = os.loadavg()[0];
  const rateOk = minRate >= MIN_UPDATE_HZ;
  const workOk = views.every((v) => v.trace.frameWork.p95 !== null && v.trace.frameWork.p95 <= FRAME_BUDGET_MS);
  const size = `${opts.layers} x ${opts.experts}`;
  const target = (t, pass) => (held ? { target: t, pass } : { note2: `no target at this size (${t} at the smaller ones)` });

  const metrics = [
    { metric: `${size}: updates received by the panel`, value: updateRate, unit: '/s', digits: 1, ...target(`>= ${MIN_UPDATE_HZ} /s in every view (host relays <= ${TARGET_UPDATE_HZ})`, rateOk), note: `lowest ${minRate.toFixed(1)}/s in ${VIEW_LABEL[slowest?.view] ?? '-'} (job ${f1(slowest?.jobPassesPerS)} passes/s there); ${totalUpdates} updates in ${totalSeconds.toFixed(0)} s; job ${f1(jobRate)} passes/s, ${coalesced} snapshots coalesced by the host` },
    { metric: `${size}: frame work p95, worst view (main-thread CPU)`, value: worst?.trace.frameWork.p95 ?? null, unit: 'ms', digits: 1,
      ...target(`<= ${FRAME_BUDGET_MS} ms in every view`, workOk), note: `${VIEW_LABEL[worst?.view] ?? '-'}; per view: ${views.map((v) => `${VIEW_LABEL[v.view]} ${f1(v.trace.frameWork.p95)}`).join(', ')}` },
    { metric: `${size}: frame work p50 / p99 / max, all views`, value: `${f1(work.p50)} / ${f1(work.p99)} / ${f1(work.max)} ms`, unit: '',
      note: `${work.n} frames; ${pct(work.over16)} over 16 ms` },
    { metric: `${size}: frame busy time (wall) p50 / p95 / p99 / max`, value: `${f1(busy.p50)} / ${f1(busy.p95)} / ${f1(busy.p99)} / ${f1(busy.max)} ms`, unit: '',
      note: `wall-clock time of the frames' main-thread tasks; ${pct(busy.over16)} over 16 ms; load average ${loadStart.toFixed(1)} -> ${loadEnd.toFixed(1)} on ${os.cpus().length} cores` },
    { metric: `${size}: frame duration (Chrome) p50 / p95 / max`, value: `${f1(duration.p50)} / ${f1(duration.p95)} / ${f1(duration.max)} ms`, unit: '',
      note: 'first task to end of rendering, idle gaps included (Long Animation Frames definition)' },
    { metric: `${size}: frames rendered`, value: work.n / totalSeconds, unit: '/s', digits: 1, target: 'paints in every view', pass: rendering,
      note: `${views.reduce((s, v) => s + v.trace.paints, 0)} paints, ${views.reduce((s, v) => s + v.trace.presented, 0)} presented; panel document ${views.every((v) => v.visibility === 'visible') ? 'visible' : 'hidden in some view'}` },
    { metric: `${size}: analysis worker CPU per update`, value: workerPerUpdate.length ? workerPerUpdate.reduce((a, b) => a + b, 0) / workerPerUpdate.length : null, unit: 'ms', digits: 2,
      note: `ingest of every update + analysis at up to 5 Hz, off the main thread; worker at ${pct(workerShare)} of a core` },
  ];

  for (const m of metrics) {
    if (m.note2) m.note = m.note ? `${m.note}; ${m.note2}` : m.note2;
    delete m.note2;
  }
  console.log(`\nSummary, ${size} (frame = Chrome animation frame of the panel renderer; work = its main-thread CPU time):`);
  console.log(`  view           frames/s  work p50   p95    p99    max   >16ms   busy p95   max    updates/s`);
  for (const v of views) {
    const w = v.trace.frameWork;
    const b = v.trace.frameBusy;
    console.log(`  ${VIEW_LABEL[v.view].padEnd(14)} ${(v.trace.frames / v.trace.spanS).toFixed(1).padStart(7)}  ${f1(w.p50).padStart(7)} ${f1(w.p95).padStart(6)} ${f1(w.p99).padStart(6)} ${f1(w.max).padStart(6)}  ${pct(w.over16).padStart(5)}  ${f1(b.p95).padStart(8)} ${f1(b.max).padStart(6)}  ${v.updatesPerS.toFixed(1).padStart(8)}`);
  }
  for (const m of metrics) {
    const value = typeof m.value === 'number' ? `${m.value.toFixed(m.digits ?? 1)} ${m.unit}` : m.value ?? '-';
    console.log(`  ${m.metric}: ${value}${m.target ? `  (target ${m.target}: ${m.pass ? 'pass' : 'FAIL'})` : ''}${m.note ? ` -- ${m.note}` : ''}`);
  }

  return {
    layers: opts.layers, experts: opts.experts, held, jobRate: opts.rate, loadAvgStart: loadStart, loadAvgEnd: loadEnd, ...setup,
    views: views.map(({ trace, ...v }) => ({ ...v, trace: { ...trace, rawFrames: undefined } })),
    allViews: { frameWork: work, frameBusy: busy, frameDuration: duration },
    metrics,
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(ROOT, 'dist/extension/panel.js'))) throw new Error('dist/ is missing: run `npm run build` first.');
  const sizes = [];
  for (const [layers, experts, held] of opts.sizes) sizes.push(await runSize({ ...opts, layers, experts, held }));
  const metrics = sizes.flatMap((s) => s.metrics);
  if (sizes.length > 1) {
    console.log('\nAll sizes:');
    for (const m of metrics) {
      const value = typeof m.value === 'number' ? `${m.value.toFixed(m.digits ?? 1)} ${m.unit}` : m.value ?? '-';
      if (/updates received|frame work p95/.test(m.metric)) console.log(`  ${m.metric}: ${value}${m.target ? `  (target ${m.target}: ${m.pass ? 'pass' : 'FAIL'})` : ''}`);
    }
  }
  const result = {
    benchmark: 'panel',
    title: 'Panel frame time (DevTools, 30 Hz updates)',
    description: `The MoE panel in real DevTools (${DEVTOOLS_SIZE.width} x ${DEVTOOLS_SIZE.height} window), fed by a real job at each size, ` +
      `${opts.seconds} s traced per view after ${opts.warmup} s of warm-up; frame work = main-thread CPU of each Chrome animation frame of the panel (p95 held to ${FRAME_BUDGET_MS} ms at ` +
      `${opts.sizes.filter((x) => x[2]).map((x) => `${x[0]} x ${x[1]}`).join(' and ') || 'no size'}).`,
    quick: opts.quick,
    config: {
      sizes: opts.sizes, topK: opts.topK, tokensPerPass: opts.tokens, jobRate: opts.rate,
      secondsPerView: opts.seconds, warmup: opts.warmup, views: opts.views, headless: opts.headless, profile: opts.profile, traceCategories: TRACE_CATEGORIES,
      frameBudgetMs: FRAME_BUDGET_MS, cores: os.cpus().length,
    },
    frameDefinition: 'Chrome AnimationFrame (Long Animation Frames) of the panel renderer main thread: from the first task after ' +
      'the previous rendering update to the end of the next rendering update; work = main-thread CPU time (tdur) of the tasks in it.',
    sizes,
    metrics,
  };
  if (opts.json) {
    fs.mkdirSync(path.dirname(path.resolve(opts.json)), { recursive: true });
    fs.writeFileSync(opts.json, JSON.stringify(result, null, 2) + '\n');
  }
}

main().then(() => process.exit(0), (err) => {
  console.error(`bench_panel: ${err.stack ?? err}`);
  process.exit(1);
});
