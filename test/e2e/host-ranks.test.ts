/**
 * Ranks that do not agree with their job, through the real host over native messaging: a rank
 * that runs another model, a rank whose expert map conflicts with another's. Each is left out of
 * the job's view with a message that says why, its probe is taken out, and the other ranks keep
 * streaming. Where two ranks disagree the lower rank's word holds, whatever order they attach in.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { HostMessage, JobUpdate } from '../../src/protocol/panel';
import { HostDriver, isType } from './host-driver';
import { ROOT } from './jobs';
import { startRanks, type RankedJob } from './ranks';

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function ranks(args: string[], world: number, env: NodeJS.ProcessEnv = {}): Promise<RankedJob> {
  const job = await startRanks(args, world, 8, env);
  cleanup.push(() => job.stop());
  return job;
}

function host(): HostDriver {
  const driver = new HostDriver();
  cleanup.push(() => driver.kill());
  driver.send({ type: 'hello', version: 1 });
  return driver;
}

type Update = JobUpdate & { ranks: NonNullable<JobUpdate['ranks']> };
const jobUpdates = (driver: HostDriver, from = 0) =>
  driver.messages.slice(from).filter((m): m is Update => m.type === 'update' && Array.isArray(m.ranks));

/** Attach to the pids one after the other (each waits for its answer), as the order matters here. */
async function attachInOrder(driver: HostDriver, pids: number[]) {
  for (const pid of pids) {
    const from = driver.messages.length;
    driver.send({ type: 'attach', pid });
    await driver.waitFor((m) => (m.type === 'attached' || m.type === 'error') && 'pid' in m && m.pid === pid, 60000, from);
  }
}

/** The job's updates go on after `from` with only these ranks, their passes growing. */
async function streamsOn(driver: HostDriver, from: number, rankNumbers: number[]) {
  const first = (await driver.waitFor((m) => m.type === 'update' && Array.isArray(m.ranks) && m.ranks.length === rankNumbers.length, 20000, from)) as Update;
  const at = driver.messages.length;
  await new Promise((r) => setTimeout(r, 2000));
  const later = jobUpdates(driver, at).pop()!;
  expect(later.ranks.map((r) => r.rank).sort()).toEqual(rankNumbers);
  for (const r of later.ranks) expect(r.passes).toBeGreaterThan(first.ranks.find((x) => x.rank === r.rank)!.passes + 5);
  return later;
}

describe('ranks that do not agree with their job', () => {
  it('leaves out a rank that runs another model, even when it was attached first', async () => {
    const job = await ranks(['--mode', 'dp', '--sleep', '0.05', '--different-model-on-rank', '2'], 3);
    const driver = host();
    const byRank = new Map(job.logs().map((l) => [l.ready.rank, l.ready.pid]));
    await attachInOrder(driver, [byRank.get(2)!, byRank.get(0)!, byRank.get(1)!]);
    const conflict = await driver.waitFor((m) => m.type === 'error' && m.code === 'rank_conflict', 20000) as Extract<HostMessage, { type: 'error' }>;
    expect(conflict.message).toBe(
      `Rank 2 (pid ${byRank.get(2)} on ${os.hostname()}) is left out of the job's view and detached: `
      + 'it reports a different model than rank 0: it runs Model with 3 MoE layers, rank 0 Model with 2 MoE layers. The other ranks go on.');
    // its probe is taken out; the job's model is rank 0's
    await driver.waitFor(isType('detached', byRank.get(2)), 20000);
    const attached = driver.messages.filter((m): m is Extract<HostMessage, { type: 'attached' }> => m.type === 'attached' && m.method === 'ranks');
    expect(attached.at(-1)!.models[0]!.layers).toHaveLength(2);
    const last = await streamsOn(driver, driver.messages.length, [0, 1]);
    expect(last.widths).toEqual([8, 8]);
    const ranksMessage = driver.messages.filter((m): m is Extract<HostMessage, { type: 'ranks' }> => m.type === 'ranks').at(-1)!;
    expect(ranksMessage.ranks.map((r) => [r.rank, r.status])).toEqual([[0, 'attached'], [1, 'attached'], [2, 'excluded']]);
    // explanations and the weight analysis are asked of one process: the job says plainly it has none
    const group = ranksMessage.pid;
    for (const [id, request] of [[901, { type: 'explain', pid: group, id: 901, model: 0, pass: 1, index: 0, layer: 0, expert: 0 }], [902, { type: 'expert-params', pid: group, id: 902, model: 0 }]] as const) {
      driver.send(request);
      const refused = await driver.waitFor((m) => m.type === 'refused' && m.id === id, 10000) as Extract<HostMessage, { type: 'refused' }>;
      expect(refused).toMatchObject({ pid: group, request: request.type, code: 'distributed_job' });
      expect(refused.message).toContain('not available for a distributed job');
    }
  });

  it('leaves out a rank whose expert map conflicts with another rank\'s', async () => {
    // rank 1 holds experts 4..7 but says 2, 3, 4, 5: half of rank 0's slice
    const job = await ranks(['--mode', 'ep', '--sleep', '0.05', '--expert-map', 'user', '--claim', '1:2,3,4,5'], 2, { PYTHONPATH: path.join(ROOT, 'native-host') });
    const driver = host();
    const byRank = new Map(job.logs().map((l) => [l.ready.rank, l.ready.pid]));
    await attachInOrder(driver, [byRank.get(1)!, byRank.get(0)!]);
    const conflict = await driver.waitFor((m) => m.type === 'error' && m.code === 'rank_conflict', 20000) as Extract<HostMessage, { type: 'error' }>;
    expect(conflict.message).toContain(`Rank 1 (pid ${byRank.get(1)}`);
    expect(conflict.message).toContain("its expert map conflicts with rank 0's: it says it holds experts 2, 3, 4, 5 of layers.0.mlp, rank 0 holds 0, 1, 2, 3");
    await driver.waitFor(isType('detached', byRank.get(1)), 20000);
    await streamsOn(driver, driver.messages.length, [0]);
  });
});
