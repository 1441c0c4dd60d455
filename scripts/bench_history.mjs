// History database benchmark: does writing the history slow the relay, what does it cost the host,
// and how big does the database grow?
//
// One job, scripts/bench_panel_job.py at 64 MoE layers x 256 experts, top-8, 32 tokens a pass, paced
// to 30 passes/s with a 10 ms probe flush, so the probe sends a counts snapshot (64 x 256 int64
// counts, router health, block times) about 30 times a second. The built host
// (dist/host/moe-devtools-host) is started fresh for each round with the history off
// (MOE_DEVTOOLS_DB=off) or on (a new database file), with this script in the browser's place,
// rounds alternating off, on, off, on, ... so that both see the same machine load. Per round:
//   - latency from the probe's snapshot time to the update leaving the host (p50, p99, max);
//   - the host's CPU time over the round (all its threads: the database thread included) and RSS;
//   - updates per second relayed;
//   - on: the database file's growth and the snapshots stored, from which its size per hour at the
//     observed snapshot rate and at exactly 30 Hz; snapshots the database could not keep up with.
//
//   node scripts/bench_history.mjs [--quick] [--rounds N] [--duration S] [--layers L] [--experts E] [--json OUT]
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, requireProjectPython } from './python-env.mjs';
import { NativeFrames, nowMs, readProc, sendNative } from './lib/native-host.mjs';
import { quantile } from './lib/stats.mjs';

function parseArgs(argv) {
  const opts = { quick: false, rounds: null, duration: null, layers: 64, experts: 256, json: null, rate: 30 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--quick') opts.quick = true;
    else if (a === '--rounds') opts.rounds = Number(next());
    else if (a === '--duration') opts.duration = Number(next());
    else if (a === '--layers') opts.layers = Number(next());
    else if (a === '--experts') opts.experts = Number(next());
    else if (a === '--rate') opts.rate = Number(next());
    else if (a === '--json') opts.json = next();
    else throw new Error(`unknown argument ${a}`);
  }
  opts.rounds ??= opts.quick ? 2 : 4;
  opts.duration ??= opts.quick ? 10 : 40;
  return opts;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Payload bytes per table, read from the database file itself (SQLite, as the host wrote it). */
function tableBytes(file) {
  const { Database } = createRequire(import.meta.url)('node-sqlite3-wasm');
  const db = new Database(file, { readOnly: true });
  try {
    const one = (sql) => Object.values(db.get(sql))[0] ?? 0;
    return {
      snapshots: one('SELECT COUNT(*) FROM snapshots'),
      snapshotBytes: one('SELECT COALESCE(SUM(LENGTH(data) + LENGTH(meta)), 0) FROM snapshots'),
      keyBytes: one('SELECT COALESCE(SUM(LENGTH(data)), 0) FROM snapshots WHERE key = 1'),
      keys: one('SELECT COUNT(*) FROM snapshots WHERE key = 1'),
      tokenRecords: one('SELECT COUNT(*) FROM tokens'),
      tokenBytes: one('SELECT COALESCE(SUM(LENGTH(data)), 0) FROM tokens'),
    };
  } finally {
    db.close();
  }
}

async function round(opts, jobPid, history, dir, index) {
  const db = path.join(dir, `history-${index}.sqlite`);
  const host = spawn(path.join(ROOT, 'dist/host/moe-devtools-host'), ['bench'], {
    stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, MOE_DEVTOOLS_DB: history ? db : 'off' },
  });
  let err = '';
  host.stderr.on('data', (d) => (err += d));
  const frames = new NativeFrames(host.stdout);
  try {
    sendNative(host, { type: 'hello', version: 1 });
    await frames.wait((m) => m.type === 'hello', 10000, 'hello');
    sendNative(host, { type: 'attach', pid: jobPid });
    const attached = await frames.wait((m) => (m.type === 'attached' || m.type === 'error') && m.pid === jobPid, 60000, 'attached');
    if (attached.type === 'error') throw new Error(`attach: ${attached.message}`);
    await frames.wait((m) => m.type === 'update', 20000, 'the first update');
    await sleep(2000); // the first snapshots, the database thread starting
    const from = frames.items.length;
    const cpu0 = readProc(host.pid);
    const size0 = history && fs.existsSync(db) ? fs.statSync(db).size : 0;
    const t0 = nowMs();
    let rssMax = 0;
    while (nowMs() - t0 < opts.duration * 1000) {
      await sleep(250);
      rssMax = Math.max(rssMax, readProc(host.pid)?.rssBytes ?? 0);
    }
    const t1 = nowMs();
    const cpu1 = readProc(host.pid);
    const window = frames.items.slice(from).filter((m) => m._at <= t1);
    const updates = window.filter((m) => m.type === 'update');
    const latencies = updates.map((m) => m._at - m.ts * 1000).sort((a, b) => a - b);
    const stats = window.filter((m) => m.type === 'host-stats').at(-1);
    let stored = null;
    if (history) {
      sendNative(host, { type: 'sessions' });
      const s = await frames.wait((m) => m.type === 'sessions', 20000, 'sessions', from);
      const session = s.sessions[0];
      stored = { snapshots: session.snapshots, payloadBytes: session.bytes, tokenPasses: session.tokenPasses, firstTs: session.firstTs, lastTs: session.lastTs };
    }
    sendNative(host, { type: 'detach', pid: jobPid });
    await frames.wait((m) => m.type === 'detached', 20000, 'detached');
    host.stdin.end();
    await new Promise((r) => host.once('exit', r));
    const size1 = history ? fs.statSync(db).size : 0;
    const tables = history ? tableBytes(db) : null;
    const seconds = (t1 - t0) / 1000;
    return {
      history, seconds, updates: updates.length, updatesPerS: updates.length / seconds,
      latency: { p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99), max: latencies.at(-1), n: latencies.length },
      hostCpu: (cpu1.cpuS - cpu0.cpuS) / seconds, rssMax,
      droppedWrites: stats?.database?.droppedWrites ?? 0,
      db: history ? { grewBytes: size1 - size0, fileBytes: size1, ...stored, tables } : null,
    };
  } catch (e) {
    throw new Error(`${e.message}\nhost stderr: ${err.slice(-2000)}`);
  } finally {
    if (host.exitCode === null) host.kill('SIGKILL');
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const python = requireProjectPython();
  if (!fs.existsSync(path.join(ROOT, 'dist/host/moe-devtools-host'))) throw new Error('dist/host is missing: run `npm run build` first');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-history-'));
  const status = path.join(dir, 'job.json');
  const job = spawn(python, [path.join(ROOT, 'scripts/bench_panel_job.py'), '--layers', String(opts.layers), '--experts', String(opts.experts),
    '--rate', String(opts.rate), '--flush-ms', '10', '--status', status], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MOE_DEVTOOLS_SOCKET_DIR: dir } });
  let jobErr = '';
  job.stderr.on('data', (d) => (jobErr += d));
  try {
    const started = Date.now();
    while (!fs.existsSync(status)) {
      if (job.exitCode !== null || Date.now() - started > 180_000) throw new Error(`the job did not start: ${jobErr.slice(-2000)}`);
      await sleep(200);
    }
    process.env.MOE_DEVTOOLS_SOCKET_DIR = dir; // the host finds the job's probe socket there
    console.log(`history: job pid ${job.pid}, ${opts.layers} layers x ${opts.experts} experts, top-8, ${opts.rate} passes/s; ${opts.rounds} rounds of ${opts.duration} s, history off/on alternating`);
    const rounds = [];
    for (let i = 0; i < opts.rounds; i++) {
      const r = await round(opts, job.pid, i % 2 === 1, dir, i);
      rounds.push(r);
      const js = JSON.parse(fs.readFileSync(status, 'utf8'));
      console.log(`  round ${i + 1} history ${r.history ? 'on ' : 'off'}: ${r.updatesPerS.toFixed(1)} updates/s, latency p50 ${r.latency.p50.toFixed(1)} ms p99 ${r.latency.p99.toFixed(1)} ms max ${r.latency.max.toFixed(1)} ms, ` +
        `host CPU ${(100 * r.hostCpu).toFixed(1)} % of a core, RSS max ${(r.rssMax / 2 ** 20).toFixed(0)} MiB` +
        (r.db ? `, database +${(r.db.grewBytes / 1e6).toFixed(1)} MB for ${r.db.snapshots} snapshots (${r.droppedWrites} not written)` : '') + ` [job ${js.passes_per_s.toFixed(1)} passes/s]`);
    }
    const side = (on) => rounds.filter((r) => r.history === on);
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const off = side(false);
    const on = side(true);
    const p50 = (rs) => mean(rs.map((r) => r.latency.p50));
    const p99 = (rs) => mean(rs.map((r) => r.latency.p99));
    const cpu = (rs) => mean(rs.map((r) => r.hostCpu));
    // Size per hour: counts snapshots x the snapshot rate, plus token records at their own rate
    // (MOE_DEVTOOLS_DB_TOKENS_PER_S, whatever the snapshot rate), each scaled by the file's own
    // overhead over payload (pages, indexes, free space) as measured.
    const overhead = mean(on.map((r) => r.db.fileBytes / Math.max(1, r.db.tables.snapshotBytes + r.db.tables.tokenBytes)));
    const perSnapshot = mean(on.map((r) => r.db.tables.snapshotBytes / Math.max(1, r.db.tables.snapshots))) * overhead;
    const perDelta = mean(on.map((r) => (r.db.tables.snapshotBytes - r.db.tables.keyBytes) / Math.max(1, r.db.tables.snapshots - r.db.tables.keys)));
    const perKey = mean(on.map((r) => r.db.tables.keyBytes / Math.max(1, r.db.tables.keys)));
    const tokensPerHour = mean(on.map((r) => r.db.tables.tokenBytes / Math.max(1e-9, r.db.lastTs - r.db.firstTs))) * 3600 * overhead;
    const snapshotRate = mean(on.map((r) => r.db.snapshots / Math.max(1e-9, r.db.lastTs - r.db.firstTs)));
    const perHourAt30 = perSnapshot * 30 * 3600 + tokensPerHour;
    const perHourObserved = perSnapshot * snapshotRate * 3600 + tokensPerHour;
    const dropped = on.reduce((a, r) => a + r.droppedWrites, 0);
    console.log(`  off: latency p50 ${p50(off).toFixed(1)} ms, p99 ${p99(off).toFixed(1)} ms, host CPU ${(100 * cpu(off)).toFixed(1)} %`);
    console.log(`  on:  latency p50 ${p50(on).toFixed(1)} ms, p99 ${p99(on).toFixed(1)} ms, host CPU ${(100 * cpu(on)).toFixed(1)} %; ` +
      `${(perSnapshot / 1024).toFixed(1)} KiB per snapshot on disk (difference ${(perDelta / 1024).toFixed(1)} KiB, key ${(perKey / 1024).toFixed(1)} KiB of payload), ` +
      `token records ${(tokensPerHour / 1e6).toFixed(0)} MB/h; ${(perHourAt30 / 1e9).toFixed(2)} GB per hour at 30 Hz (${snapshotRate.toFixed(1)} Hz observed here)`);
    const result = {
      benchmark: 'history',
      title: 'History database: relay with writing on vs off, size per hour',
      description: `scripts/bench_panel_job.py (${opts.layers} layers x ${opts.experts} experts, top-8, ${opts.rate} passes/s, 10 ms flush) attached through a fresh built host per round, history off and on alternating.`,
      quick: opts.quick,
      config: opts,
      rounds,
      metrics: [
        { metric: 'latency p50, history off | on', value: `${p50(off).toFixed(1)} | ${p50(on).toFixed(1)}`, unit: 'ms' },
        { metric: 'latency p99, history off | on', value: `${p99(off).toFixed(1)} | ${p99(on).toFixed(1)}`, unit: 'ms', target: 'on within 5 ms or 20 % of off',
          pass: p99(on) <= Math.max(p99(off) + 5, 1.2 * p99(off)) },
        { metric: 'host CPU, history off | on', value: `${(100 * cpu(off)).toFixed(1)} | ${(100 * cpu(on)).toFixed(1)}`, unit: '% of a core', note: 'all host threads, the database thread included' },
        { metric: 'updates relayed per second, off | on', value: `${mean(off.map((r) => r.updatesPerS)).toFixed(1)} | ${mean(on.map((r) => r.updatesPerS)).toFixed(1)}`, unit: '/s' },
        { metric: 'snapshots not written (database behind)', value: dropped, unit: '', target: '0', pass: dropped === 0 },
        { metric: `database per counts snapshot (${opts.layers} x ${opts.experts}), on disk`, value: perSnapshot / 1024, unit: 'KiB', digits: 1,
          note: `payload: difference ${(perDelta / 1024).toFixed(1)} KiB, key (every 64th) ${(perKey / 1024).toFixed(1)} KiB; file / payload ${overhead.toFixed(2)}` },
        { metric: 'token records (1 sampled pass/s)', value: tokensPerHour / 1e6, unit: 'MB/h', digits: 0 },
        { metric: `database per hour at 30 Hz (${opts.layers} x ${opts.experts})`, value: perHourAt30 / 1e9, unit: 'GB', digits: 2,
          note: `snapshots x 30 x 3600 + token records; ${snapshotRate.toFixed(1)} snapshots/s observed here -> ${(perHourObserved / 1e9).toFixed(2)} GB/h` },
      ],
    };
    if (opts.json) {
      fs.mkdirSync(path.dirname(path.resolve(opts.json)), { recursive: true });
      fs.writeFileSync(opts.json, JSON.stringify(result, null, 2));
    }
  } finally {
    job.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`bench_history: ${err.stack ?? err}`);
  process.exit(1);
});
