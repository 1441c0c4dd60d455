/**
 * Which processes are ranks of one job, from a /proc folder written the way Linux shows it
 * (environ NUL-separated, stat with the command name in parentheses, cmdline NUL-separated).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { distEnvFrom, distributedJobs, jobKey, localJobKey, ppidFromStat, processDist, readDistFacts } from '../../native-host/src/dist-discovery';

let proc: string;
beforeEach(() => {
  proc = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-proc-'));
});
afterEach(() => fs.rmSync(proc, { recursive: true, force: true }));

function fakeProcess(pid: number, ppid: number, cmdline: string[], env: Record<string, string> = {}) {
  const dir = path.join(proc, String(pid));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'cmdline'), `${cmdline.join('\0')}\0`);
  fs.writeFileSync(path.join(dir, 'environ'), `${Object.entries({ PATH: '/usr/bin', HOME: '/root', ...env }).map(([k, v]) => `${k}=${v}`).join('\0')}\0`);
  // the command name may hold spaces and parentheses; the fields after the last ")" are what count
  fs.writeFileSync(path.join(dir, 'stat'), `${pid} (pt (main) x) S ${ppid} ${pid} ${pid} 0 -1 4194560 1 0 0 0`);
}

const facts = (pid: number) => readDistFacts(pid, fs.readFileSync(path.join(proc, `${pid}/cmdline`), 'utf8').split('\0').filter(Boolean), proc);

describe('finding the ranks of a job', () => {
  it('reads the launcher environment and the parent', () => {
    expect(distEnvFrom('A=1\0RANK=3\0WORLD_SIZE=8\0MASTER_ADDR=10.0.0.1\0X=RANK=9\0')).toEqual({ RANK: '3', WORLD_SIZE: '8', MASTER_ADDR: '10.0.0.1' });
    expect(ppidFromStat('42 (a) b) c) S 7 42 42 0')).toBe(7);
  });

  it('groups torchrun ranks by run id and rendezvous, across machines alike', () => {
    fakeProcess(100, 1, ['python', '/usr/bin/torchrun', '--nproc-per-node', '2', 'train.py']);
    const env = { TORCHELASTIC_RUN_ID: 'f3c1', MASTER_ADDR: '10.0.0.7', MASTER_PORT: '29500', WORLD_SIZE: '4' };
    fakeProcess(101, 100, ['python', '-u', 'train.py'], { ...env, RANK: '0', LOCAL_RANK: '0' });
    fakeProcess(102, 100, ['python', '-u', 'train.py'], { ...env, RANK: '1', LOCAL_RANK: '1' });
    const jobs = distributedJobs([facts(101), facts(102)]);
    expect(jobs.get(101)).toEqual({ job: 'torch:f3c1@10.0.0.7:29500', label: 'torchrun f3c1, world 4', rank: 0, worldSize: 4, localRank: 0 });
    expect(jobs.get(102)!.job).toBe(jobs.get(101)!.job);
    expect(jobs.get(102)!.rank).toBe(1);
    // the probe in a rank says the same from inside: the same key
    expect(localJobKey(null, { rank: 3, world_size: 4, local_rank: 1, node: 'n2', run_id: 'f3c1', master: '10.0.0.7:29500', backend: 'gloo', source: 'torch.distributed' }).key)
      .toBe('torch:f3c1@10.0.0.7:29500');
  });

  it('keys a static rendezvous (run id "none") by its address; a world of one is no job', () => {
    expect(jobKey('none', '10.0.0.1:29611')).toBe('torch:@10.0.0.1:29611');
    expect(jobKey('', '')).toBeNull();
    fakeProcess(200, 1, ['python', 'serve.py'], { RANK: '0', WORLD_SIZE: '1', MASTER_ADDR: 'localhost', MASTER_PORT: '1' });
    fakeProcess(201, 1, ['python', 'srun_rank.py'], { RANK: '2', WORLD_SIZE: '8', MASTER_ADDR: 'node0', MASTER_PORT: '1234' });
    const jobs = distributedJobs([facts(200), facts(201)]);
    expect(jobs.has(200)).toBe(false);
    expect(jobs.get(201)).toEqual({ job: 'torch:@node0:1234', label: 'torch.distributed at node0:1234, world 8', rank: 2, worldSize: 8, localRank: null });
  });

  it('groups Ray workers by their raylet, and children of a launcher by their parent', () => {
    fakeProcess(300, 1, ['/usr/bin/raylet']);
    fakeProcess(301, 300, ['ray::RayWorkerWrapper.execute_method']);
    fakeProcess(302, 300, ['ray::RayWorkerWrapper.execute_method']);
    fakeProcess(400, 1, ['/usr/bin/python3', '/usr/local/bin/deepspeed', 'train.py']);
    fakeProcess(401, 400, ['python', 'train.py', '--local_rank=0']);
    fakeProcess(402, 400, ['python', 'train.py', '--local_rank=1']);
    const jobs = distributedJobs([301, 302, 401, 402].map(facts));
    expect(jobs.get(301)).toMatchObject({ job: 'ray:300', label: 'Ray workers of raylet 300', rank: null });
    expect(jobs.get(302)!.job).toBe('ray:300');
    expect(jobs.get(401)).toMatchObject({ job: 'parent:400', label: 'deepspeed started by 400' });
    expect(jobs.get(402)!.job).toBe('parent:400');
  });

  it('does not take a training process and its data loader workers for a job', () => {
    // torch DataLoader workers: children of the trainer, torch loaded, no launcher, no rank
    fakeProcess(500, 1, ['python', 'train.py']);
    fakeProcess(501, 500, ['python', 'train.py']);
    fakeProcess(502, 500, ['python', 'train.py']);
    expect(distributedJobs([500, 501, 502].map(facts)).size).toBe(0);
    // a launcher with one child is no job either
    fakeProcess(600, 1, ['torchrun', 'x.py']);
    fakeProcess(601, 600, ['python', 'x.py']);
    expect(processDist(facts(601), 1)).toBeUndefined();
  });

  it("falls back on what the system says when a rank's probe knows no rendezvous", () => {
    fakeProcess(700, 1, ['/usr/bin/raylet']);
    fakeProcess(701, 700, ['ray::RayWorkerWrapper']);
    const dist = { rank: 1, world_size: 2, local_rank: -1, node: 'gpu-3', run_id: '', master: '', backend: 'nccl', source: 'torch.distributed' as const };
    expect(localJobKey(701, dist, proc)).toEqual({ key: 'ray:700', label: 'Ray workers of raylet 700, world 2' });
    expect(localJobKey(null, dist, proc)).toEqual({ key: 'world:2@gpu-3', label: 'distributed job on gpu-3, world 2' });
  });
});
