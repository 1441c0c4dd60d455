/**
 * Real distributed jobs for the end-to-end tests (test/jobs/ep_moe_job.py: torch.distributed on
 * CPU with gloo), and reading what each rank logged about itself.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, findWindow, pythonPath, type PassRecord } from './jobs';

export const EP_JOB = path.join(ROOT, 'test/jobs/ep_moe_job.py');

export interface RankLog {
  ready: { pid: number; rank: number; world_size: number; held: number[]; mode: string };
  passes: Array<{ pass: number; routed: number[][]; received: number[][]; out: string; hooks: number; threads: string[] }>;
}

export function readRankLog(file: string): RankLog | null {
  if (!fs.existsSync(file)) return null;
  let ready: RankLog['ready'] | undefined;
  const passes: RankLog['passes'] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(line);
    } catch {
      continue; // the line being written right now
    }
    if (value.ready) ready = value as unknown as RankLog['ready'];
    else passes.push(value as unknown as RankLog['passes'][number]);
  }
  return ready ? { ready, passes } : null;
}

/** A rank's passes as PassRecords whose counts are what its own experts received, at their global ids. */
export function receivedAtGlobalIds(log: RankLog, experts: number): PassRecord[] {
  return log.passes.map((p) => ({
    pass: p.pass, out: p.out, hooks: p.hooks, threads: p.threads,
    counts: p.received.map((perLocal) => {
      const row = new Array<number>(experts).fill(0);
      perLocal.forEach((n, j) => (row[log.ready.held[j]!] += n));
      return row;
    }),
  }));
}

/** Whether some run of `passes` consecutive passes of the rank's log sums to `counts` in `layer`. */
export function rankWindowFound(log: RankLog, layer: number, passes: number, counts: number[]): boolean {
  return findWindow(receivedAtGlobalIds(log, counts.length), layer, passes, counts) >= 0;
}

export interface RankedJob {
  dir: string;
  /** The launcher processes (torchrun, or the ranks themselves); killed as process groups. */
  launchers: ChildProcess[];
  logs(): RankLog[];
  pids(): number[];
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait until every one of `world` ranks has logged at least `minPasses` passes. */
async function waitForRanks(job: RankedJob, world: number, minPasses: number, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const logs = job.logs();
    if (logs.length === world && logs.every((l) => l.passes.length >= minPasses)) return;
    if (job.launchers.some((c) => c.exitCode !== null)) throw new Error(`a launcher exited early: ${stderr()}`);
    await sleep(200);
  }
  await job.stop();
  throw new Error(`the ${world} ranks did not run ${minPasses} passes within 120 s: ${stderr()}`);
}

function rankedJob(dir: string, world: number, launchers: ChildProcess[]): RankedJob {
  return {
    dir,
    launchers,
    logs: () => Array.from({ length: world }, (_, r) => readRankLog(path.join(dir, `rank${r}.jsonl`))).filter((l): l is RankLog => l !== null),
    pids() {
      return this.logs().map((l) => l.ready.pid);
    },
    async stop() {
      // torchrun starts each rank in a session of its own: kill the ranks by pid, then the launchers.
      const kill = (pid: number) => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      };
      const running = () => launchers.filter((c) => c.exitCode === null && c.signalCode === null);
      for (const pid of this.pids()) kill(pid);
      for (const c of running()) c.kill('SIGTERM'); // torchrun stops whatever workers it still has
      const deadline = Date.now() + 5000;
      while (running().length && Date.now() < deadline) await sleep(100);
      for (const c of running()) kill(c.pid!);
      await Promise.all(running().map((c) => new Promise((r) => c.once('exit', r))));
    },
  };
}

function collect(children: ChildProcess[]): () => string {
  let text = '';
  for (const c of children) c.stderr?.on('data', (d) => (text = (text + d).slice(-4000)));
  return () => text;
}

/** `torchrun --standalone --nproc-per-node N ep_moe_job.py` on this machine. */
export async function startTorchrunJob(args: string[], nproc = 4, minPasses = 8): Promise<RankedJob> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-ranks-'));
  const torchrun = path.join(path.dirname(pythonPath()), 'torchrun');
  const child = spawn(torchrun, ['--standalone', '--nproc-per-node', String(nproc), EP_JOB, '--log-dir', dir, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'], detached: true, env: { ...process.env, OMP_NUM_THREADS: '1' },
  });
  const job = rankedJob(dir, nproc, [child]);
  await waitForRanks(job, nproc, minPasses, collect([child]));
  return job;
}

/**
 * The ranks started one by one with the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR,
 * MASTER_PORT), as Slurm or MPI wrappers do: no agent that stops the others when one dies.
 */
export async function startRanks(args: string[], world = 4, minPasses = 8, env: NodeJS.ProcessEnv = {}): Promise<RankedJob> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-ranks-'));
  const port = 29000 + (process.pid % 2000) + Math.floor(Math.random() * 500);
  const children = Array.from({ length: world }, (_, rank) => spawn(pythonPath(), [EP_JOB, '--log-dir', dir, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'], detached: true,
    env: { ...process.env, ...env, OMP_NUM_THREADS: '1', RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: String(world), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) },
  }));
  const job = rankedJob(dir, world, children);
  await waitForRanks(job, world, minPasses, collect(children));
  return job;
}
