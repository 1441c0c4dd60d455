// Anomaly detection false alarms on healthy runs (src/analysis/anomaly.ts, run by the host).
//
// 1. Live: the demo job (scripts/demo_job.py: the committed byte-level Mixtral generating Python
//    code, a healthy job, started under `python -m moe_probe run`) attached through the built native host (dist/host/moe-devtools-host,
//    which runs the change detection on every attached job and sends 'anomaly' messages), for
//    --minutes (30; --quick 2). Every anomaly the host reports is a false alarm: nothing changes
//    in that job. With none, the rule of three gives the 95 % upper bound 3 / hours per job.
// 2. Bootstrap: the live run's own one-second routing increments (from the updates the host sent),
//    drawn with replacement into a stream of --bootstrap-hours (24) and fed to a fresh detector:
//    more healthy hours with the real job's block-to-block variation, under the assumption that
//    the job is stationary (it is: prompts drawn at random from a fixed set).
// 3. Synthetic: --synthetic-hours (24) of a 16-layer x 64-expert job at 2 snapshots/s whose
//    routing varies from block to block more than sampling alone would (inputs change "topic"
//    every 2 s), as in test/unit/anomaly.test.ts.
//
//   node scripts/bench_anomaly.mjs [--quick] [--minutes M] [--bootstrap-hours H] [--synthetic-hours H] [--json OUT]
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as esbuild from 'esbuild';
import { ROOT, requireProjectPython } from './python-env.mjs';

function parseArgs(argv) {
  const opts = { quick: false, minutes: null, bootstrapHours: 24, syntheticHours: 24, json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--quick') opts.quick = true;
    else if (a === '--minutes') opts.minutes = Number(next());
    else if (a === '--bootstrap-hours') opts.bootstrapHours = Number(next());
    else if (a === '--synthetic-hours') opts.syntheticHours = Number(next());
    else if (a === '--json') opts.json = next();
    else throw new Error(`unknown argument ${a}`);
  }
  opts.minutes ??= opts.quick ? 2 : 30;
  if (opts.quick) {
    opts.bootstrapHours = Math.min(opts.bootstrapHours, 2);
    opts.syntheticHours = Math.min(opts.syntheticHours, 2);
  }
  return opts;
}

/** The detector from the TypeScript sources, bundled on the fly (the same code the host runs). */
async function loadDetector() {
  const out = await esbuild.build({ entryPoints: [path.join(ROOT, 'src/analysis/anomaly.ts')], bundle: true, format: 'esm', platform: 'node', write: false, logLevel: 'warning' });
  return import(`data:text/javascript;base64,${Buffer.from(out.outputFiles[0].text).toString('base64')}`);
}

class NativeFrames {
  constructor(stream) {
    this.items = [];
    let buf = Buffer.alloc(0);
    stream.on('data', (c) => {
      buf = Buffer.concat([buf, c]);
      while (buf.length >= 4) {
        const n = buf.readUInt32LE(0);
        if (buf.length < 4 + n) break;
        this.items.push(JSON.parse(buf.subarray(4, 4 + n).toString('utf8')));
        buf = buf.subarray(4 + n);
      }
    });
  }

  async wait(pred, ms, what) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const m = this.items.find(pred);
      if (m) return m;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting for ${what}`);
  }
}

function send(child, message) {
  const body = Buffer.from(JSON.stringify(message));
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length);
  child.stdin.write(Buffer.concat([head, body]));
}

/** A seeded generator (mulberry32). */
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

async function live(opts, dbFile) {
  const python = requireProjectPython();
  // under the probe (it listens on its socket; no injection, which a heavily loaded machine can time out)
  const job = spawn(python, ['-m', 'moe_probe', 'run', path.join(ROOT, 'scripts/demo_job.py'), '--quiet', '--seconds', String(opts.minutes * 60 + 120)],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONPATH: path.join(ROOT, 'native-host') } });
  let jobOut = '';
  job.stdout.on('data', (d) => (jobOut += d));
  job.stderr.on('data', (d) => (jobOut += d));
  const started = Date.now();
  const socket = path.join(`/tmp/moe-devtools-${process.getuid()}`, `probe-${job.pid}.sock`);
  while (!jobOut.includes('demo_job: generating') || !fs.existsSync(process.env.MOE_DEVTOOLS_SOCKET_DIR ? path.join(process.env.MOE_DEVTOOLS_SOCKET_DIR, `probe-${job.pid}.sock`) : socket)) {
    if (job.exitCode !== null || Date.now() - started > 180_000) throw new Error(`the demo job did not start: ${jobOut.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const host = spawn(path.join(ROOT, 'dist/host/moe-devtools-host'), ['bench'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, MOE_DEVTOOLS_DB: dbFile } });
  let hostErr = '';
  host.stderr.on('data', (d) => (hostErr += d));
  const frames = new NativeFrames(host.stdout);
  try {
    send(host, { type: 'hello', version: 1 });
    await frames.wait((m) => m.type === 'hello', 10000, 'hello');
    send(host, { type: 'attach', pid: job.pid });
    const attached = await frames.wait((m) => (m.type === 'attached' || m.type === 'error') && m.pid === job.pid, 60000, 'attached');
    if (attached.type === 'error') throw new Error(`attach failed: ${attached.message}`);
    const layers = attached.models[0].layers.length;
    console.log(`anomaly: demo job pid ${job.pid} (${attached.models[0].class}, ${layers} MoE layers), attached by ${attached.method}; watching for ${opts.minutes} min`);
    const t0 = Date.now();
    let said = 0;
    while (Date.now() - t0 < opts.minutes * 60_000) {
      await new Promise((r) => setTimeout(r, 5000));
      const n = frames.items.filter((m) => m.type === 'anomaly').length;
      const min = Math.floor((Date.now() - t0) / 60_000);
      if (min >= said + 5 || n) {
        said = min;
        const last = frames.items.filter((m) => m.type === 'update').at(-1);
        console.log(`  ${min} min: ${last?.passes ?? 0} passes, ${last?.tokens?.[0] ?? 0} tokens, ${n} anomaly findings`);
      }
    }
    send(host, { type: 'detach', pid: job.pid });
    await frames.wait((m) => m.type === 'detached' && m.pid === job.pid, 20000, 'detached');
    host.stdin.end();
    await new Promise((r) => host.once('exit', r));
    const updates = frames.items.filter((m) => m.type === 'update' && m.pid === job.pid);
    const anomalies = frames.items.filter((m) => m.type === 'anomaly').map((m) => m.anomaly);
    const last = updates.at(-1);
    return {
      layers, models: attached.models, updates, anomalies, minutes: (Date.now() - t0) / 60_000,
      passes: last.passes, tokens: last.tokens[0], seconds: last.ts - updates[0].ts, dbBytes: fs.statSync(dbFile).size,
    };
  } catch (err) {
    throw new Error(`${err.message}\nhost stderr: ${hostErr.slice(-2000)}`);
  } finally {
    if (host.exitCode === null) host.kill('SIGKILL');
    job.kill('SIGKILL');
  }
}

/** Resample the run's one-second increments into a long stationary stream and count findings. */
function bootstrap(detectorLib, run, hours, seed) {
  const { AnomalyDetector } = detectorLib;
  const u = run.updates;
  // increments between snapshots about a second apart
  const steps = [];
  let prev = u[0];
  for (const x of u) {
    if (x.ts - prev.ts < 1) continue;
    steps.push({ dt: x.ts - prev.ts, passes: x.passes - prev.passes, counts: x.counts.map((c, i) => c - prev.counts[i]), tokens: x.tokens.map((c, i) => c - prev.tokens[i]),
      health: x.health ? x.health.map((c, i) => c - prev.health[i]) : null, timeS: x.timeS ? x.timeS.map((c, i) => c - prev.timeS[i]) : null });
    prev = x;
  }
  const info = run.models[0].layers.map((l) => ({ label: l.name, experts: l.experts, topK: l.top_k }));
  const det = new AnomalyDetector(info);
  const rand = prng(seed);
  const acc = { ts: 1e9, passes: 0, counts: new Float64Array(u[0].counts.length), tokens: new Float64Array(u[0].tokens.length), health: u[0].health ? new Float64Array(u[0].health.length) : null, timeS: u[0].timeS ? new Float64Array(u[0].timeS.length) : null };
  const found = [];
  while (acc.ts - 1e9 < hours * 3600) {
    const s = steps[Math.floor(rand() * steps.length)];
    acc.ts += s.dt;
    acc.passes += s.passes;
    s.counts.forEach((v, i) => (acc.counts[i] += v));
    s.tokens.forEach((v, i) => (acc.tokens[i] += v));
    if (acc.health && s.health) s.health.forEach((v, i) => (acc.health[i] += v));
    if (acc.timeS && s.timeS) s.timeS.forEach((v, i) => (acc.timeS[i] += v));
    found.push(...det.push({ ts: acc.ts, passes: acc.passes, counts: acc.counts, tokens: acc.tokens, health: acc.health, timeS: acc.timeS }));
  }
  return { hours, steps: steps.length, findings: found };
}

/** A synthetic stationary job with overdispersed routing (see the file comment). */
function synthetic(detectorLib, hours, seed) {
  const { AnomalyDetector } = detectorLib;
  const L = 16;
  const E = 64;
  const hz = 2;
  const tokens = 1000; // per snapshot per layer: 2000 tokens/s
  const rand = prng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const base = Array.from({ length: L }, (_, l) => {
    const w = Array.from({ length: E }, (_, e) => 1 / (e + 1) ** (0.3 + 0.05 * l));
    const s = w.reduce((a, b) => a + b, 0);
    return w.map((x) => x / s);
  });
  const det = new AnomalyDetector(Array.from({ length: L }, (_, l) => ({ label: `layer ${l}`, experts: E, topK: 1 })));
  const counts = new Float64Array(L * E);
  const tok = new Float64Array(L);
  const health = new Float64Array(L * 6);
  const timeS = new Float64Array(L);
  let tilt = base;
  const found = [];
  const n = hours * 3600 * hz;
  for (let i = 0; i < n; i++) {
    if (i % (2 * hz) === 0) tilt = base.map((p) => p.map((x) => x * Math.exp(0.15 * normal())));
    for (let l = 0; l < L; l++) {
      const p = tilt[l];
      const sum = p.reduce((a, b) => a + b, 0);
      let left = tokens;
      let mass = 1;
      for (let e = 0; e < E; e++) {
        const q = p[e] / sum;
        let k;
        if (e === E - 1) k = left;
        else {
          const pr = Math.min(1, q / mass);
          k = Math.max(0, Math.min(left, Math.round(left * pr + Math.sqrt(left * pr * (1 - pr)) * normal())));
        }
        counts[l * E + e] += k;
        left -= k;
        mass -= q;
      }
      tok[l] += tokens;
      health[l * 6] += tokens;
      health[l * 6 + 1] += tokens * 0.7 * Math.log(E) * (1 + 0.01 * normal());
      health[l * 6 + 2] += tokens * 9 * (1 + 0.02 * normal());
      timeS[l] += 0.001 * (1 + 0.05 * normal());
    }
    found.push(...det.push({ ts: 1e9 + i / hz, passes: i, counts, tokens: tok, health, timeS }));
  }
  return { hours, layers: L, experts: E, findings: found };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(ROOT, 'dist/host/moe-devtools-host'))) throw new Error('dist/host is missing: run `npm run build` first');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-anomaly-'));
  try {
    const lib = await loadDetector();
    const run = await live(opts, path.join(dir, 'history.sqlite'));
    const hours = run.minutes / 60;
    const liveCount = run.anomalies.length;
    const liveRate = liveCount / hours;
    const liveBound = (liveCount === 0 ? 3 : liveCount + 2 * Math.sqrt(liveCount)) / hours; // rule of three; else about +2 sd
    console.log(`  live: ${run.minutes.toFixed(1)} min, ${run.passes} passes, ${run.tokens} tokens, ${liveCount} findings` +
      (liveCount ? `: ${run.anomalies.map((a) => `${a.metric} L${a.layer} ${a.message}`).join(' | ')}` : ''));
    const boot = bootstrap(lib, run, opts.bootstrapHours, 11);
    console.log(`  bootstrap: ${boot.hours} h from ${boot.steps} one-second increments of the live run, ${boot.findings.length} findings` +
      (boot.findings.length ? ` (${[...new Set(boot.findings.map((f) => f.metric))].join(', ')})` : ''));
    const syn = synthetic(lib, opts.syntheticHours, 5);
    console.log(`  synthetic: ${syn.hours} h of ${syn.layers} layers x ${syn.experts} experts, ${syn.findings.length} findings`);
    const byMetric = (list) => Object.fromEntries(['routing', 'router_entropy', 'z_loss', 'nan_inf', 'time'].map((m) => [m, list.filter((f) => f.metric === m).length]));
    const result = {
      benchmark: 'anomaly',
      title: 'Anomaly detection on healthy runs (false alarms)',
      description: `The demo job (healthy) attached through the built host for ${opts.minutes} min; then ${opts.bootstrapHours} h resampled from its own one-second increments, and ${opts.syntheticHours} h of a synthetic 16 x 64 job, through the same detector.`,
      quick: opts.quick,
      live: { minutes: run.minutes, layers: run.layers, passes: run.passes, tokens: run.tokens, findings: run.anomalies, by_metric: byMetric(run.anomalies), db_bytes: run.dbBytes },
      bootstrap: { hours: boot.hours, steps: boot.steps, findings: boot.findings.length, by_metric: byMetric(boot.findings), examples: boot.findings.slice(0, 5) },
      synthetic: { hours: syn.hours, layers: syn.layers, experts: syn.experts, findings: syn.findings.length, by_metric: byMetric(syn.findings), examples: syn.findings.slice(0, 5) },
      metrics: [
        { metric: `live healthy run (${run.layers} layers): findings`, value: liveCount, unit: '', target: '0', pass: liveCount === 0,
          note: `${run.minutes.toFixed(1)} min, ${run.passes} passes, ${run.tokens} tokens of the demo job` },
        { metric: 'live false-alarm rate (95 % upper bound)', value: liveBound, unit: '/ h per job', digits: 2, note: `observed ${liveRate.toFixed(2)} / h; rule of three on ${hours.toFixed(2)} h` },
        { metric: 'bootstrap of the live run: findings', value: boot.findings.length, unit: `in ${boot.hours} h`, note: `${(boot.findings.length / boot.hours).toFixed(3)} / h per job (${run.layers} layers)` },
        { metric: 'synthetic 16 x 64 job: findings', value: syn.findings.length, unit: `in ${syn.hours} h`, note: `${(syn.findings.length / syn.hours).toFixed(3)} / h per job (16 layers, 5 quantities each)` },
      ],
    };
    if (opts.json) {
      fs.mkdirSync(path.dirname(path.resolve(opts.json)), { recursive: true });
      fs.writeFileSync(opts.json, JSON.stringify(result, null, 2));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`bench_anomaly: ${err.stack ?? err}`);
  process.exit(1);
});
