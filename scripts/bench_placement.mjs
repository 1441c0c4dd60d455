// Expert placement benchmark: our plan (src/analysis/placement.ts planPlacement) against the
// reference, DeepSeek's EPLB greedy (eplbPlacement, the same algorithm as eplb.py's global policy:
// replicate the expert with the largest load per replica, then pack replicas heaviest first onto
// the lightest device with a free slot), on
//   1. the demo model's real loads: the demo job (scripts/demo_job.py, 4 layers x 8 experts, top-2,
//      generating Python code) attached through the built host for --seconds (20), each layer's
//      assignments per expert since attach;
//   2. synthetic skewed loads: Zipf-like loads (load_e ~ 1 / rank^s x noise) over 64 and 256 experts,
//      s from 0.6 to 1.4, on 8 to 32 devices with G or 2G redundant slots.
// It prints, for each case, the predicted device balancedness (mean / max device load) before
// (contiguous, no replicas), with EPLB and with ours, and the time ours took.
//
//   node scripts/bench_placement.mjs [--quick] [--seconds S] [--json OUT]
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as esbuild from 'esbuild';
import { ROOT, requireProjectPython } from './python-env.mjs';
import { NativeFrames, sendNative } from './lib/native-host.mjs';

function parseArgs(argv) {
  const opts = { quick: false, seconds: null, json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') opts.quick = true;
    else if (a === '--seconds') opts.seconds = Number(argv[++i]);
    else if (a === '--json') opts.json = argv[++i];
    else throw new Error(`unknown argument ${a}`);
  }
  opts.seconds ??= opts.quick ? 8 : 20;
  return opts;
}

async function loadPlacement() {
  const out = await esbuild.build({ entryPoints: [path.join(ROOT, 'src/analysis/placement.ts')], bundle: true, format: 'esm', platform: 'node', write: false, logLevel: 'warning' });
  return import(`data:text/javascript;base64,${Buffer.from(out.outputFiles[0].text).toString('base64')}`);
}

/** Each layer's assignments per expert over `seconds` of the demo job, through the built host. */
async function demoLoads(seconds) {
  const python = requireProjectPython();
  const job = spawn(python, ['-m', 'moe_probe', 'run', path.join(ROOT, 'scripts/demo_job.py'), '--quiet', '--sleep', '0', '--seconds', String(seconds + 120)],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONPATH: path.join(ROOT, 'native-host') } });
  let out = '';
  job.stdout.on('data', (d) => (out += d));
  job.stderr.on('data', (d) => (out += d));
  const dir = process.env.MOE_DEVTOOLS_SOCKET_DIR ?? `/tmp/moe-devtools-${process.getuid()}`;
  const started = Date.now();
  while (!out.includes('demo_job: generating') || !fs.existsSync(path.join(dir, `probe-${job.pid}.sock`))) {
    if (job.exitCode !== null || Date.now() - started > 180_000) throw new Error(`the demo job did not start: ${out.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const host = spawn(path.join(ROOT, 'dist/host/moe-devtools-host'), ['bench'], { stdio: ['pipe', 'pipe', 'ignore'], env: { ...process.env, MOE_DEVTOOLS_DB: 'off' } });
  const frames = new NativeFrames(host.stdout);
  try {
    sendNative(host, { type: 'hello', version: 1 });
    sendNative(host, { type: 'attach', pid: job.pid });
    const attached = await frames.wait((m) => (m.type === 'attached' || m.type === 'error') && m.pid === job.pid, 60000, 'attached');
    if (attached.type === 'error') throw new Error(`attach: ${attached.message}`);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const u = frames.items.filter((m) => m.type === 'update').at(-1);
    let off = 0;
    return { passes: u.passes, tokens: u.tokens[0], layers: u.widths.map((w) => u.counts.slice(off, (off += w))) };
  } finally {
    host.kill('SIGKILL');
    job.kill('SIGKILL');
  }
}

function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const P = await loadPlacement();
  const cases = [];
  const run = (name, load, G, R) => {
    const t = performance.now();
    const ours = P.planPlacement(load, G, R);
    const ms = performance.now() - t;
    const eplb = P.eplbPlacement(load, G, R);
    const before = load.length % G === 0 ? P.contiguousPlacement(load, G).balancedness : NaN;
    cases.push({ name, experts: load.length, G, R, before, eplb: eplb.balancedness, ours: ours.balancedness, ms });
  };

  const demo = await demoLoads(opts.seconds);
  console.log(`placement: demo model loads from ${demo.passes} passes (${demo.tokens} tokens), ${demo.layers.length} layers x ${demo.layers[0].length} experts`);
  for (const [G, R] of [[2, 0], [2, 2], [4, 0], [4, 4], [4, 8], [8, 8]]) {
    demo.layers.forEach((load, l) => run(`demo layer ${l}`, load, G, R));
  }
  const rand = prng(42);
  const synthetic = opts.quick ? [[64, 8, 8], [256, 16, 16]] : [[64, 8, 8], [64, 8, 16], [64, 16, 16], [256, 8, 8], [256, 16, 16], [256, 16, 32], [256, 32, 32], [256, 32, 64]];
  for (const [E, G, R] of synthetic) {
    for (const s of [0.6, 1.0, 1.4]) {
      for (let trial = 0; trial < (opts.quick ? 1 : 3); trial++) {
        const order = Array.from({ length: E }, (_, i) => i).sort(() => rand() - 0.5); // hot experts anywhere, not first
        const load = new Array(E);
        order.forEach((e, rank) => (load[e] = Math.round(1e6 / (rank + 1) ** s * (0.7 + 0.6 * rand()))));
        run(`zipf s=${s}`, load, G, R);
      }
    }
  }
  const fmt = (x) => (Number.isFinite(x) ? x.toFixed(4) : '  -   ');
  console.log('  case                 E    G    R   before   EPLB     ours     ms');
  for (const c of cases) console.log(`  ${c.name.padEnd(18)} ${String(c.experts).padStart(4)} ${String(c.G).padStart(4)} ${String(c.R).padStart(4)}   ${fmt(c.before)}   ${fmt(c.eplb)}   ${fmt(c.ours)}   ${c.ms.toFixed(1)}`);
  const group = (pred) => {
    const cs = cases.filter(pred);
    const mean = (f) => cs.reduce((a, c) => a + f(c), 0) / cs.length;
    return { n: cs.length, eplb: mean((c) => c.eplb), ours: mean((c) => c.ours), worstGap: Math.min(...cs.map((c) => c.ours - c.eplb)), better: cs.filter((c) => c.ours > c.eplb + 1e-9).length, maxMs: Math.max(...cs.map((c) => c.ms)) };
  };
  const d = group((c) => c.name.startsWith('demo'));
  const z = group((c) => c.name.startsWith('zipf'));
  console.log(`  demo: mean balancedness EPLB ${d.eplb.toFixed(4)}, ours ${d.ours.toFixed(4)} (better in ${d.better} of ${d.n}, never worse: ${d.worstGap >= -1e-12})`);
  console.log(`  zipf: mean balancedness EPLB ${z.eplb.toFixed(4)}, ours ${z.ours.toFixed(4)} (better in ${z.better} of ${z.n}, never worse: ${z.worstGap >= -1e-12}); ours took at most ${z.maxMs.toFixed(0)} ms`);
  const result = {
    benchmark: 'placement',
    title: 'Expert placement: ours vs EPLB greedy',
    description: 'Predicted device balancedness (mean / max device load) of our plan and of EPLB\'s greedy on the demo model\'s real loads and on synthetic Zipf-like loads.',
    quick: opts.quick, demo: { passes: demo.passes, tokens: demo.tokens, loads: demo.layers }, cases,
    metrics: [
      { metric: 'demo model: mean balancedness EPLB | ours', value: `${d.eplb.toFixed(4)} | ${d.ours.toFixed(4)}`, unit: '', note: `${d.n} cases (4 layers x 6 device/slot settings); ours better in ${d.better}` },
      { metric: 'synthetic skewed: mean balancedness EPLB | ours', value: `${z.eplb.toFixed(4)} | ${z.ours.toFixed(4)}`, unit: '', note: `${z.n} cases; ours better in ${z.better}` },
      { metric: 'ours never below EPLB', value: d.worstGap >= -1e-12 && z.worstGap >= -1e-12 ? 'yes' : 'no', unit: '', target: 'yes', pass: d.worstGap >= -1e-12 && z.worstGap >= -1e-12 },
      { metric: 'our plan, slowest layer', value: Math.max(d.maxMs, z.maxMs), unit: 'ms', digits: 0 },
    ],
  };
  if (opts.json) {
    fs.mkdirSync(path.dirname(path.resolve(opts.json)), { recursive: true });
    fs.writeFileSync(opts.json, JSON.stringify(result, null, 2));
  }
}

main().catch((err) => {
  console.error(`bench_placement: ${err.stack ?? err}`);
  process.exit(1);
});
