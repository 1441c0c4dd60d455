// `npm run bench`: runs every benchmark of the project one after another and
// prints one table of their figures against the targets, with the machine they ran on.
//
//   node scripts/bench.mjs [--quick] [--only id[,id...]] [--strict]
//
// Each benchmark is a script listed in BENCHMARKS below. It is run with
// `--json OUT` (plus `--quick` when given) and must write to OUT a JSON object:
//   { "benchmark": id, "title": "...", "metrics": [
//       { "metric": "what", "value": number | string | null, "unit": "ms",
//         "target": "< 50 ms" (optional), "pass": true | false (optional, omitted = figure only),
//         "inconclusive": true (optional, with pass omitted: the run could not decide, e.g. too noisy),
//         "note": "..." (optional), "digits": 2 (optional, decimals to show) }, ... ], ...anything else }
// A listed script that does not exist gets a "not present" row; one that fails gets an "error" row.
// Results: bench-results/latest.json, bench-results/latest.md, and each benchmark's own JSON
// in bench-results/<id>.json. --strict exits 1 when a target is missed (always 1 when a benchmark fails).
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, projectPython } from './python-env.mjs';

/** Every benchmark, in the order they run. Python scripts run with the project's Python, others with node. */
export const BENCHMARKS = [
  { id: 'attach', title: 'Attach safety and time', script: 'scripts/bench_attach.mjs' },
  { id: 'probe_overhead', title: 'Probe overhead', script: 'scripts/bench_probe_overhead.py' },
  { id: 'compile', title: 'torch.compile', script: 'scripts/bench_compile.py' },
  { id: 'gpu', title: 'GPU overhead', script: 'scripts/bench_gpu.py' },
  { id: 'framework_overhead', title: 'Probe overhead, other backends', script: 'scripts/bench_framework_overhead.py' },
  { id: 'host_relay', title: 'Host relay', script: 'scripts/bench_host_relay.mjs' },
  { id: 'panel', title: 'Panel frame time', script: 'scripts/bench_panel.mjs' },
  { id: 'ranks', title: 'Distributed job (ranks)', script: 'scripts/bench_ranks.mjs' },
  { id: 'explain', title: 'Explanations and expert weights', script: 'scripts/bench_explain.py' },
  { id: 'history', title: 'History database: relay with writing on vs off, size per hour', script: 'scripts/bench_history.mjs' },
  { id: 'placement', title: 'Expert placement: ours vs EPLB greedy', script: 'scripts/bench_placement.mjs' },
  { id: 'anomaly', title: 'Anomaly detection on healthy runs', script: 'scripts/bench_anomaly.mjs' },
];

const OUT_DIR = path.join(ROOT, 'bench-results');

function parseArgs(argv) {
  const opts = { quick: false, only: null, strict: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') opts.quick = true;
    else if (a === '--strict') opts.strict = true;
    else if (a === '--only') opts.only = new Set((argv[++i] ?? '').split(',').filter(Boolean));
    else if (a === '--help' || a === '-h') {
      console.log(`usage: node scripts/bench.mjs [--quick] [--only ${BENCHMARKS.map((b) => b.id).join(',')}] [--strict]`);
      process.exit(0);
    } else {
      console.error(`bench: unknown argument ${a}`);
      process.exit(2);
    }
  }
  return opts;
}

function tryExec(cmd, args, timeout = 60000) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout, stdio: ['ignore', 'pipe', 'ignore'], cwd: ROOT }).trim();
  } catch {
    return null;
  }
}

function machineInfo() {
  const cpuinfo = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '';
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  const python = projectPython();
  let py = null;
  if (fs.existsSync(python)) {
    const out = tryExec(python, ['-c', [
      'import json, platform',
      'info = {"python": platform.python_version()}',
      'try:',
      '    import torch',
      '    info["torch"] = torch.__version__',
      '    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None',
      'except Exception as e:',
      '    info["torch"] = None',
      'try:',
      '    import transformers',
      '    info["transformers"] = transformers.__version__',
      'except Exception:',
      '    info["transformers"] = None',
      'print(json.dumps(info))',
    ].join('\n')]);
    try {
      py = JSON.parse(out);
    } catch {
      py = null;
    }
  }
  const commit = tryExec('git', ['rev-parse', '--short', 'HEAD']);
  const dirty = tryExec('git', ['status', '--porcelain', '--untracked-files=no']);
  return {
    cpu: cpuModel,
    cores: os.cpus().length,
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    gpu: py?.gpu ?? 'none',
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    python: py?.python ?? null,
    torch: py?.torch ?? null,
    transformers: py?.transformers ?? null,
    commit: commit ? commit + (dirty ? ' (with uncommitted changes)' : '') : null,
    loadAvgStart: os.loadavg()[0],
  };
}

function runScript(bench, opts) {
  const script = path.join(ROOT, bench.script);
  const jsonOut = path.join(OUT_DIR, `${bench.id}.json`);
  fs.rmSync(jsonOut, { force: true });
  const args = ['--json', jsonOut, ...(opts.quick ? ['--quick'] : [])];
  const isPython = script.endsWith('.py');
  const cmd = isPython ? projectPython() : process.execPath;
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(cmd, [script, ...args], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', (err) => resolve({ exitCode: null, error: err.message, seconds: (Date.now() - started) / 1000 }));
    child.on('exit', (code, signal) => {
      const seconds = (Date.now() - started) / 1000;
      let result = null;
      let error = null;
      if (fs.existsSync(jsonOut)) {
        try {
          result = JSON.parse(fs.readFileSync(jsonOut, 'utf8'));
        } catch (err) {
          error = `unreadable JSON output: ${err.message}`;
        }
      }
      if (code !== 0) error = `exited with ${signal ? `signal ${signal}` : `code ${code}`}`;
      else if (!result && !error) error = `wrote no JSON to ${path.relative(ROOT, jsonOut)}`;
      else if (result && !Array.isArray(result.metrics)) error = 'its JSON has no "metrics" list';
      resolve({ exitCode: code, error, result, seconds });
    });
  });
}

function formatNumber(value, digits) {
  if (typeof value !== 'number') return value === null || value === undefined ? '-' : String(value);
  if (!Number.isFinite(value)) return String(value);
  if (digits !== undefined) return value.toFixed(digits);
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${(value / 1e6).toFixed(3)} M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)} k`;
  if (Number.isInteger(value)) return String(value);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  return value.toFixed(abs >= 1 ? 2 : 4);
}

function formatValue(m) {
  const v = formatNumber(m.value, m.digits);
  if (!m.unit || typeof m.value !== 'number') return v;
  return `${v} ${m.unit}`;
}

function rowsFor(bench, run) {
  if (run.status === 'not present') {
    return [{ benchmark: bench.title, metric: '-', value: 'not present', target: '', result: 'skipped', note: `${bench.script} does not exist` }];
  }
  if (run.status === 'skipped') {
    return [{ benchmark: bench.title, metric: '-', value: 'not run', target: '', result: 'skipped', note: 'left out by --only' }];
  }
  if (run.error) {
    return [{ benchmark: bench.title, metric: '-', value: run.error, target: '', result: 'ERROR', note: `see its output above (${bench.script})` }];
  }
  const title = run.result.title ?? bench.title;
  return run.result.metrics.map((m) => ({
    benchmark: title,
    metric: m.metric,
    value: formatValue(m),
    target: m.target ?? '',
    result: m.pass === true ? 'pass' : m.pass === false ? 'FAIL' : m.inconclusive ? 'inconclusive' : '',
    note: m.note ?? '',
  }));
}

function textTable(rows) {
  const cols = ['benchmark', 'metric', 'value', 'target', 'result'];
  const heads = ['Benchmark', 'Metric', 'Value', 'Target', 'Pass/fail'];
  const width = cols.map((c, i) => Math.max(heads[i].length, ...rows.map((r) => String(r[c]).length)));
  const line = (cells) => cells.map((cell, i) => String(cell).padEnd(width[i])).join('  ').trimEnd();
  const out = [line(heads), width.map((w) => '-'.repeat(w)).join('  ')];
  let last = null;
  for (const r of rows) {
    out.push(line(cols.map((c) => (c === 'benchmark' && r.benchmark === last ? '' : r[c]))));
    last = r.benchmark;
  }
  return out.join('\n');
}

function machineLine(m) {
  return `${m.cpu}, ${m.cores} cores, ${m.ramGiB} GiB RAM, GPU: ${m.gpu}; ${m.os}; Node ${m.node}, Python ${m.python ?? '?'}, ` +
    `torch ${m.torch ?? '?'}, transformers ${m.transformers ?? '?'}`;
}

function loadLine(m) {
  const busy = Math.max(m.loadAvgStart, m.loadAvgEnd ?? 0) > 0.5 * m.cores;
  return `load average (1 min) ${m.loadAvgStart.toFixed(2)} at start, ${(m.loadAvgEnd ?? NaN).toFixed(2)} at end` +
    (busy ? ' -- other processes were using the CPU, so timings are noisy' : '');
}

function markdown(report) {
  const m = report.machine;
  const esc = (s) => String(s).replace(/\|/g, '\\|');
  const lines = [
    '# MoE DevTools benchmarks',
    '',
    `Run on ${report.date} with \`npm run bench${report.quick ? ' -- --quick' : ''}\`${m.commit ? ` at commit ${m.commit}` : ''}, ${report.seconds.toFixed(0)} s in all.`,
    '',
    `- Machine: ${machineLine(m)}`,
    `- ${loadLine(m)[0].toUpperCase()}${loadLine(m).slice(1)}`,
    '',
    '| Benchmark | Metric | Value | Target | Pass/fail | Notes |',
    '|---|---|---|---|---|---|',
    ...report.rows.map((r) => `| ${[r.benchmark, r.metric, r.value, r.target, r.result, r.note].map(esc).join(' | ')} |`),
    '',
    ...report.benchmarks.filter((b) => b.result?.description).flatMap((b) => [`- **${b.result.title ?? b.title}**: ${b.result.description}`]),
    '',
    'Each benchmark\'s own JSON (configuration, per-round figures) is in `bench-results/<id>.json`; ' +
      'how each is measured is described at the top of its script: ' +
      report.benchmarks.map((b) => `\`${b.script}\``).join(', ') + '.',
    '',
  ];
  return lines.join('\n');
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const started = Date.now();
  const date = new Date().toISOString();
  const machine = machineInfo();
  console.log(`bench: ${date}${opts.quick ? ' (quick)' : ''}\nmachine: ${machineLine(machine)}\n`);

  const runs = [];
  for (const bench of BENCHMARKS) {
    const entry = { id: bench.id, title: bench.title, script: bench.script };
    if (opts.only && !opts.only.has(bench.id)) {
      runs.push({ ...entry, status: 'skipped' });
      continue;
    }
    if (!fs.existsSync(path.join(ROOT, bench.script))) {
      console.log(`== ${bench.title}: ${bench.script} not present, skipped\n`);
      runs.push({ ...entry, status: 'not present' });
      continue;
    }
    console.log(`== ${bench.title}: ${bench.script}${opts.quick ? ' --quick' : ''}`);
    const run = await runScript(bench, opts);
    console.log(`== ${bench.title}: ${run.error ? `ERROR (${run.error})` : 'done'} in ${run.seconds.toFixed(1)} s\n`);
    runs.push({ ...entry, status: run.error ? 'error' : 'ok', ...run });
  }
  machine.loadAvgEnd = os.loadavg()[0];

  const rows = BENCHMARKS.flatMap((bench, i) => rowsFor(bench, runs[i]));
  const report = {
    date,
    quick: opts.quick,
    seconds: (Date.now() - started) / 1000,
    machine,
    rows,
    benchmarks: runs.map((r) => ({
      id: r.id, title: r.title, script: r.script, status: r.status, seconds: r.seconds ?? null,
      error: r.error ?? null, result: r.result ?? null,
    })),
  };
  fs.writeFileSync(path.join(OUT_DIR, 'latest.json'), JSON.stringify(report, null, 2) + '\n');
  fs.writeFileSync(path.join(OUT_DIR, 'latest.md'), markdown(report));

  console.log(textTable(rows));
  console.log(`\nmachine: ${machineLine(machine)}`);
  console.log(`${loadLine(machine)}`);
  console.log(`date: ${date}${machine.commit ? `, commit ${machine.commit}` : ''}; ${report.seconds.toFixed(0)} s in all`);
  console.log(`written: ${path.relative(ROOT, path.join(OUT_DIR, 'latest.json'))}, ${path.relative(ROOT, path.join(OUT_DIR, 'latest.md'))}`);

  const errors = runs.filter((r) => r.status === 'error').length;
  const fails = rows.filter((r) => r.result === 'FAIL').length;
  if (errors || fails) console.log(`${errors} benchmark(s) failed to run, ${fails} target(s) missed`);
  process.exit(errors || (opts.strict && fails) ? 1 : 0);
}

main().catch((err) => {
  console.error(`bench: ${err.stack ?? err}`);
  process.exit(1);
});
