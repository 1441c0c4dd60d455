// Attach benchmark: safety over many cycles, and how long an attach takes with each method.
//
// 1. Attach safety: real torch MoE jobs whose main thread, between passes, sleeps, computes with
//    no system call, runs beside threads blocked in queue.get/select/epoll, blocks reading a pipe,
//    or runs a multi-threaded torch op (test/jobs/attach_safety_job.py) are attached and detached
//    through the real native host, CYCLES times in all; after every cycle the job must be alive,
//    silent on stderr, computing the same outputs, and free of our threads (scripts/lib/attach-safety.mjs).
//    Prints the number of harmed jobs (target 0).
// 2. Attach time, from the attach request to the host's 'attached' (the probe connected and said
//    hello), on the same job (sleeping between passes) and in the same run: the native injector
//    (20 attaches; target median < 100 ms), then gdb (20) and lldb (5) forced through
//    MOE_DEVTOOLS_ATTACH_METHODS, each only where its canary passes on this machine.
//
//   node scripts/bench_attach.mjs [--quick] [--json OUT]
import * as fs from 'node:fs';
import { requireProjectPython } from './python-env.mjs';
import { attachDetach, checkUnharmed, NativeHost, STATES, startSafetyJob } from './lib/attach-safety.mjs';
import { quantile } from './lib/stats.mjs';

const TARGET_MEDIAN_MS = 100;

function parseArgs(argv) {
  const opts = { quick: false, json: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--quick') opts.quick = true;
    else if (argv[i] === '--json') opts.json = argv[++i];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return opts;
}

const passes = (job) => job.records().filter((r) => r.pass !== undefined);

async function safetyCycles(python, perState) {
  const host = new NativeHost();
  await host.ready();
  const harmed = [];
  const times = [];
  let cycles = 0;
  try {
    for (const state of STATES) {
      const job = await startSafetyJob(state, python);
      const baseline = passes(job).at(-1).threads;
      try {
        for (let i = 0; i < perState; i++) {
          let problems;
          try {
            const attached = await attachDetach(host, job);
            times.push(attached.ms);
            problems = await checkUnharmed(job, baseline);
          } catch (err) {
            problems = [err.message];
          }
          cycles += 1;
          if (problems.length) {
            harmed.push({ state, cycle: i, problems });
            console.log(`  ${state} cycle ${i}: ${problems.join('; ')}`);
            if (!job.alive()) break;
          }
        }
        console.log(`attach safety: ${state}: ${perState} cycles, ${harmed.filter((h) => h.state === state).length} harmed`);
      } finally {
        job.stop();
      }
    }
  } finally {
    host.kill();
  }
  return { harmed, cycles, times };
}

async function attachTimes(python, method, count) {
  const env = method === 'ptrace' ? {} : { MOE_DEVTOOLS_ATTACH_METHODS: method };
  const host = new NativeHost(env);
  await host.ready();
  const job = await startSafetyJob('sleep', python);
  const times = [];
  let failure = null;
  try {
    for (let i = 0; i < count; i++) {
      try {
        const attached = await attachDetach(host, job);
        if (attached.method !== method) throw new Error(`attached via ${attached.method}, not ${method}`);
        times.push(attached.ms);
      } catch (err) {
        failure = err.message;
        break;
      }
    }
  } finally {
    job.stop();
    host.kill();
  }
  return { times, failure };
}

function summary(times) {
  const sorted = [...times].sort((a, b) => a - b);
  return { median: quantile(sorted, 0.5), max: sorted.at(-1) ?? null, n: sorted.length };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const python = requireProjectPython();
  const perState = opts.quick ? 10 : 40;
  const metrics = [];

  const safety = await safetyCycles(python, perState);
  metrics.push({
    metric: 'jobs harmed by attach/detach', value: safety.harmed.length, unit: `of ${safety.cycles} cycles`, target: '0',
    pass: safety.harmed.length === 0, note: `${perState} cycles in each state: ${STATES.join(', ')}`,
  });
  const all = summary(safety.times);
  metrics.push({ metric: 'attach time over those cycles, median / max', value: `${all.median?.toFixed(0)} / ${all.max?.toFixed(0)}`, unit: 'ms', note: `${all.n} attaches, all states` });

  const counts = { ptrace: opts.quick ? 10 : 20, gdb: opts.quick ? 5 : 20, lldb: opts.quick ? 2 : 5 };
  const byMethod = {};
  for (const method of ['ptrace', 'gdb', 'lldb']) {
    const { times, failure } = await attachTimes(python, method, counts[method]);
    byMethod[method] = { ...summary(times), failure };
    const s = byMethod[method];
    console.log(`attach time via ${method}: ${s.n} attaches, median ${s.median?.toFixed(1)} ms, max ${s.max?.toFixed(1)} ms${failure ? ` (stopped: ${failure})` : ''}`);
    const row = { metric: `attach time via ${method}, median (max) over ${s.n}`, value: s.median === null ? null : Number(s.median.toFixed(1)), unit: 'ms',
      note: s.max === null ? `not usable here: ${failure}` : `max ${s.max.toFixed(1)} ms${failure ? `; stopped: ${failure}` : ''}` };
    if (method === 'ptrace') Object.assign(row, { target: `median < ${TARGET_MEDIAN_MS} ms`, pass: s.median !== null && s.median < TARGET_MEDIAN_MS && s.n === counts.ptrace });
    metrics.push(row);
  }
  const result = { benchmark: 'attach', title: 'Attach safety and time', metrics, harmed: safety.harmed, byMethod };
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify(result, null, 2));
  console.log(`attach: ${safety.harmed.length} of ${safety.cycles} cycles harmed a job; ptrace attach median ${byMethod.ptrace.median?.toFixed(1)} ms, max ${byMethod.ptrace.max?.toFixed(1)} ms`);
}

main().catch((err) => {
  console.error(`bench_attach: ${err.stack ?? err}`);
  process.exit(1);
});
