// The panel's frame time, from a Chrome performance trace of DevTools: the frames of the panel
// renderer's main thread and the CPU time of the tasks in each. Shared by the panel benchmarks
// (scripts/bench_panel.mjs, scripts/bench_ranks.mjs); the definition is at the top of bench_panel.mjs.
import { quantile } from './stats.mjs';

/** One 60 Hz frame: the budget a frame's main-thread work is held to. */
export const FRAME_BUDGET_MS = 16;

export function stats(values) {
  const s = [...values].sort((a, b) => a - b);
  if (!s.length) return { n: 0, p50: null, p95: null, p99: null, max: null, mean: null, over16: null };
  return {
    n: s.length,
    p50: quantile(s, 0.5),
    p95: quantile(s, 0.95),
    p99: quantile(s, 0.99),
    max: s[s.length - 1],
    mean: s.reduce((a, b) => a + b, 0) / s.length,
    over16: s.filter((v) => v > FRAME_BUDGET_MS).length / s.length,
  };
}


/** The panel renderer's pid and its main and worker threads. */
function findPanelThreads(events) {
  let pid = null;
  for (const e of events) {
    const frames = e.name === 'TracingStartedInBrowser' ? e.args?.data?.frames : null;
    const found = frames?.find((f) => typeof f.url === 'string' && f.url.endsWith('/panel.html'));
    if (found) pid = found.processId;
  }
  if (pid === null) {
    for (const e of events) {
      const d = e.args?.data;
      if ((e.name === 'FrameCommittedInBrowser' || e.name === 'CommitLoad') && typeof d?.url === 'string' && d.url.endsWith('/panel.html') && d.processId) pid = d.processId;
    }
  }
  if (pid === null) throw new Error('the trace does not show the panel frame (no /panel.html in TracingStartedInBrowser)');
  let main = null;
  const workers = [];
  for (const e of events) {
    if (e.ph !== 'M' || e.name !== 'thread_name' || e.pid !== pid) continue;
    if (e.args.name === 'CrRendererMain') main = e.tid;
    else if (e.args.name === 'DedicatedWorker thread') workers.push(e.tid);
  }
  if (main === null) throw new Error(`no CrRendererMain thread in the panel's renderer (pid ${pid})`);
  return { pid, main, workers };
}

const cpuOf = (e) => (e.tdur ?? e.dur ?? 0) / 1000;

/** Exclusive (self) time per event name over one thread's complete (X) events. */
function selfTimes(xs) {
  const sorted = [...xs].sort((a, b) => a.ts - b.ts || b.dur - a.dur);
  const self = new Map();
  const stack = [];
  const add = (name, cpu, wall) => {
    const v = self.get(name) ?? { cpu: 0, wall: 0, n: 0 };
    v.cpu += cpu;
    v.wall += wall;
    self.set(name, v);
  };
  const close = (top) => add(top.e.name, Math.max(0, cpuOf(top.e) - top.childCpu), Math.max(0, top.e.dur / 1000 - top.childWall));
  for (const e of sorted) {
    while (stack.length && stack[stack.length - 1].end <= e.ts) close(stack.pop());
    if (stack.length) {
      stack[stack.length - 1].childCpu += cpuOf(e);
      stack[stack.length - 1].childWall += e.dur / 1000;
    }
    stack.push({ e, end: e.ts + e.dur, childCpu: 0, childWall: 0 });
    self.get(e.name) ?? self.set(e.name, { cpu: 0, wall: 0, n: 0 });
    self.get(e.name).n++;
  }
  while (stack.length) close(stack.pop());
  return self;
}

/** Self time per JavaScript function from the V8 sampling profiler's ProfileChunk events, per thread. */
function profileSelfTimes(events, pid, tid) {
  const byId = new Map();
  for (const e of events) {
    if (e.pid !== pid || (e.name !== 'Profile' && e.name !== 'ProfileChunk')) continue;
    const id = e.id ?? e.id2?.local;
    let p = byId.get(id);
    if (!p) byId.set(id, (p = { tid: e.tid, nodes: new Map(), samples: [], deltas: [] }));
    if (e.name === 'Profile') p.tid = e.tid;
    const d = e.args?.data;
    for (const n of d?.cpuProfile?.nodes ?? []) p.nodes.set(n.id, n);
    if (d?.cpuProfile?.samples) p.samples.push(...d.cpuProfile.samples);
    if (d?.timeDeltas) p.deltas.push(...d.timeDeltas);
  }
  const self = new Map();
  for (const p of byId.values()) {
    if (p.tid !== tid) continue;
    for (let i = 0; i < p.samples.length; i++) {
      const node = p.nodes.get(p.samples[i]);
      const dt = (p.deltas[i + 1] ?? 0) / 1000;
      if (!node || !(dt > 0)) continue;
      const cf = node.callFrame ?? {};
      const file = (cf.url ?? '').split('/').pop();
      const name = `${cf.functionName || '(anonymous)'}${file ? ` ${file}:${(cf.lineNumber ?? -1) + 1}` : ''}`;
      self.set(name, (self.get(name) ?? 0) + dt);
    }
  }
  return [...self.entries()].sort((a, b) => b[1] - a[1]);
}

export function analyzeTrace(events, profile) {
  const { pid, main, workers } = findPanelThreads(events);
  const mainEvents = events.filter((e) => e.pid === pid && e.tid === main);
  const tasks = mainEvents.filter((e) => e.ph === 'X' && e.name === 'RunTask').sort((a, b) => a.ts - b.ts);
  if (!tasks.length) throw new Error('no main-thread tasks of the panel in the trace');
  const t0 = Math.min(...events.filter((e) => e.pid === pid && e.ts > 0 && e.ph !== 'M').map((e) => e.ts));
  const t1 = Math.max(...events.filter((e) => e.pid === pid && e.ph !== 'M').map((e) => e.ts + (e.dur ?? 0)));
  const spanS = (t1 - t0) / 1e6;

  // Animation frames: begin/end pairs, in order (children Render / StyleAndLayout use the same id).
  const frames = [];
  let open = null;
  for (const e of mainEvents.filter((x) => x.name.startsWith('AnimationFrame')).sort((a, b) => a.ts - b.ts)) {
    if (e.name === 'AnimationFrame' && e.ph === 'b') open = { begin: e.ts, info: e.args?.animation_frame_timing_info ?? null, render: false };
    else if (e.name === 'AnimationFrame::Render' && e.ph === 'b' && open) open.render = true;
    else if (e.name === 'AnimationFrame' && e.ph === 'e' && open) {
      open.end = e.ts;
      frames.push(open);
      open = null;
    }
  }
  // Each frame's tasks: the top-level tasks that overlap it (a task is counted in the frame it ends in).
  let ti = 0;
  for (const f of frames) {
    f.cpu = 0;
    f.busy = 0;
    f.longestTask = 0;
    while (ti < tasks.length && tasks[ti].ts + tasks[ti].dur <= f.begin) ti++;
    for (let j = ti; j < tasks.length && tasks[j].ts < f.end; j++) {
      const task = tasks[j];
      const inside = Math.min(task.ts + task.dur, f.end) - Math.max(task.ts, f.begin);
      if (inside <= 0) continue;
      const share = task.dur > 0 ? inside / task.dur : 1;
      f.cpu += cpuOf(task) * share;
      f.busy += (inside / 1000);
      f.longestTask = Math.max(f.longestTask, task.dur / 1000);
    }
    f.wall = (f.end - f.begin) / 1000;
  }
  const rendered = frames.filter((f) => f.render);

  const xs = mainEvents.filter((e) => e.ph === 'X' && typeof e.dur === 'number');
  const self = selfTimes(xs);
  const mainCpu = tasks.reduce((s, t) => s + cpuOf(t), 0);
  const paints = xs.filter((e) => e.name === 'Paint').length;
  const presented = mainEvents.filter((e) => e.name === 'AnimationFrame::Presentation').length;

  const workerTasks = events.filter((e) => e.pid === pid && workers.includes(e.tid) && e.ph === 'X' && e.name === 'RunTask');
  const workerCpu = workerTasks.reduce((s, t) => s + cpuOf(t), 0);

  const result = {
    pid, mainTid: main, workerTids: workers, spanS,
    frames: rendered.length,
    framesWithoutRender: frames.length - rendered.length,
    frameWork: stats(rendered.map((f) => f.cpu)),
    frameBusy: stats(rendered.map((f) => f.busy)),
    frameDuration: stats(rendered.map((f) => f.info?.duration_ms ?? f.wall)),
    tasks: tasks.length,
    taskCpu: stats(tasks.map(cpuOf)),
    taskWall: stats(tasks.map((t) => t.dur / 1000)),
    longTasksWall50: tasks.filter((t) => t.dur > 50_000).length,
    mainCpuShare: mainCpu / 1000 / spanS,
    paints,
    presented,
    worker: { tasks: workerTasks.length, cpuMs: workerCpu, cpuShare: workerCpu / 1000 / spanS, taskCpu: stats(workerTasks.map(cpuOf)) },
    mainSelf: [...self.entries()].filter(([name]) => name !== 'RunTask').sort((a, b) => b[1].cpu - a[1].cpu).slice(0, 10)
      .map(([name, v]) => ({ name, cpuMs: v.cpu, wallMs: v.wall, n: v.n })),
    rawFrames: rendered.map((f) => ({ cpu: f.cpu, busy: f.busy, duration: f.info?.duration_ms ?? f.wall, longestTask: f.longestTask })),
  };
  if (profile) {
    result.mainFunctions = profileSelfTimes(events, pid, main).slice(0, 15).map(([name, ms]) => ({ name, ms }));
    result.workerFunctions = workers.flatMap((w) => profileSelfTimes(events, pid, w)).sort((a, b) => b[1] - a[1]).slice(0, 10)
      .map(([name, ms]) => ({ name, ms }));
  }
  return result;
}

