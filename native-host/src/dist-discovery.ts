/**
 * Which processes are ranks of one distributed job, from what the system already says, before
 * anything is attached: the launcher's environment in /proc/PID/environ (torchrun and
 * torch.distributed.launch: TORCHELASTIC_RUN_ID, RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
 * MASTER_PORT; Slurm/MPI wrappers set the same), Ray worker processes under one raylet, and
 * several torch processes started by one launcher (torch.multiprocessing.spawn, deepspeed,
 * accelerate, mpirun).
 *
 * After attaching, a rank's probe says the same from inside (ProbeHello.dist); jobKey() turns
 * either into the same key, so the host can group ranks of one job across machines.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ProcessDist } from '../../src/protocol/panel';
import type { DistInfo } from '../../src/protocol/probe';

/** The environment variables that place a process in a distributed job. */
export const DIST_ENV = ['TORCHELASTIC_RUN_ID', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'GROUP_RANK'] as const;

export interface DistFacts {
  pid: number;
  /** The DIST_ENV variables the process was started with. */
  env: Partial<Record<(typeof DIST_ENV)[number], string>>;
  ppid: number;
  cmdline: string[];
  /** The parent's command line ([] when unreadable). */
  parentCmdline: string[];
}

/** NUL-separated KEY=VALUE text of /proc/PID/environ, keeping the DIST_ENV keys. */
export function distEnvFrom(environ: string): DistFacts['env'] {
  const out: DistFacts['env'] = {};
  for (const entry of environ.split('\0')) {
    const eq = entry.indexOf('=');
    if (eq <= 0) continue;
    const key = entry.slice(0, eq) as (typeof DIST_ENV)[number];
    if ((DIST_ENV as readonly string[]).includes(key)) out[key] = entry.slice(eq + 1);
  }
  return out;
}

/** The parent pid, field 4 of /proc/PID/stat (after the command name, which may hold spaces and parentheses). */
export function ppidFromStat(stat: string): number {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[1]) || 0;
}

export function readDistFacts(pid: number, cmdline: string[], proc = '/proc'): DistFacts {
  const read = (file: string) => {
    try {
      return fs.readFileSync(path.join(proc, file), 'utf8');
    } catch {
      return ''; // another user's process, or gone
    }
  };
  const ppid = ppidFromStat(read(`${pid}/stat`));
  return {
    pid, env: distEnvFrom(read(`${pid}/environ`)), ppid, cmdline,
    parentCmdline: ppid > 1 ? read(`${ppid}/cmdline`).split('\0').filter(Boolean) : [],
  };
}

const int = (value: string | undefined): number | null => (value !== undefined && /^\d+$/.test(value) ? Number(value) : null);

/**
 * The key that names a job: the same for every rank, on every machine. torchelastic's run id
 * (not "none", the static rendezvous' placeholder) and the rendezvous address together, either
 * alone when the other is unknown. Null when neither is known.
 */
export function jobKey(runId: string, master: string): string | null {
  const run = runId && runId !== 'none' ? runId : '';
  if (!run && !master) return null;
  return `torch:${run}@${master}`;
}

/** How a job is named in the process list. */
export function jobLabel(runId: string, master: string, worldSize: number | null): string {
  const world = worldSize ? `, world ${worldSize}` : '';
  if (runId && runId !== 'none') return `torchrun ${runId.slice(0, 12)}${world}`;
  return `torch.distributed at ${master}${world}`;
}

/** Ray names its worker processes by setting their title to "ray::Class.method" (or "ray::IDLE"). */
export function isRayWorker(cmdline: string[]): boolean {
  return /^ray::/.test(cmdline[0] ?? '') || cmdline.some((a) => /(^|\/)ray\/_private\/workers\/default_worker\.py$/.test(a));
}

/** Launchers that start one process per rank (their children are the ranks). */
const LAUNCHERS = /(^|\/)(torchrun|deepspeed|accelerate|mpirun|mpiexec|srun)$/;

function launchedBy(parentCmdline: string[]): string | null {
  const args = parentCmdline.slice(0, 4);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '-m' && /^torch\.distributed\.(run|launch)$/.test(args[i + 1] ?? '')) return args[i + 1]!;
    if (a !== '-m' && LAUNCHERS.test(a)) return path.basename(a);
  }
  return null;
}

/**
 * A process's place in a distributed job, as its environment and parent say, or undefined.
 * `siblings`: how many listed torch processes share its parent (a launcher with one child is no job).
 */
export function processDist(facts: DistFacts, siblings: number): ProcessDist | undefined {
  const e = facts.env;
  const rank = int(e.RANK);
  const worldSize = int(e.WORLD_SIZE);
  const localRank = int(e.LOCAL_RANK);
  const master = e.MASTER_ADDR && e.MASTER_PORT ? `${e.MASTER_ADDR}:${e.MASTER_PORT}` : '';
  const key = jobKey(e.TORCHELASTIC_RUN_ID ?? '', master);
  if (key && (worldSize === null || worldSize > 1)) {
    return { job: key, label: jobLabel(e.TORCHELASTIC_RUN_ID ?? '', master, worldSize), rank, worldSize, localRank };
  }
  if (isRayWorker(facts.cmdline) && facts.ppid > 1) {
    // vLLM, SGLang and Ray Train workers: one raylet starts every worker of its node; their
    // ranks are known once attached (torch.distributed tells the probe).
    return { job: `ray:${facts.ppid}`, label: `Ray workers of raylet ${facts.ppid}`, rank, worldSize, localRank };
  }
  const launcher = launchedBy(facts.parentCmdline);
  if (facts.ppid > 1 && siblings > 1 && (launcher || rank !== null)) {
    return { job: `parent:${facts.ppid}`, label: `${launcher ?? 'processes'} started by ${facts.ppid}`, rank, worldSize, localRank };
  }
  return undefined;
}

/** Places of every listed process in distributed jobs, judged together (siblings share a parent). */
export function distributedJobs(all: DistFacts[]): Map<number, ProcessDist> {
  const byParent = new Map<number, number>();
  for (const f of all) byParent.set(f.ppid, (byParent.get(f.ppid) ?? 0) + 1);
  const out = new Map<number, ProcessDist>();
  for (const f of all) {
    const dist = processDist(f, byParent.get(f.ppid) ?? 0);
    if (dist) out.set(f.pid, dist);
  }
  return out;
}

/**
 * The job key and label of a rank that said where it sits (ProbeHello.dist). Where its probe knows
 * no run id or rendezvous address (Ray, vLLM's workers), what the system says about the process
 * decides (`pid`: a local process, null for one on another machine).
 */
export function localJobKey(pid: number | null, dist: DistInfo, proc = '/proc'): { key: string; label: string } {
  const key = jobKey(dist.run_id, dist.master);
  if (key) return { key, label: jobLabel(dist.run_id, dist.master, dist.world_size) };
  if (pid !== null) {
    let cmdline: string[] = [];
    try {
      cmdline = fs.readFileSync(path.join(proc, `${pid}/cmdline`), 'utf8').split('\0').filter(Boolean);
    } catch {
      // gone: fall through
    }
    const found = processDist(readDistFacts(pid, cmdline, proc), 2);
    if (found) return { key: found.job, label: `${found.label}, world ${dist.world_size}` };
  }
  return { key: `world:${dist.world_size}@${dist.node}`, label: `distributed job on ${dist.node}, world ${dist.world_size}` };
}
