/**
 * Attach safety: real torch MoE jobs whose main thread, between passes, sleeps, computes without
 * a single system call, runs beside threads blocked in queue.get / select / epoll, blocks reading
 * a pipe, or runs a multi-threaded torch op. Each is attached and detached repeatedly through the
 * real native host; after every cycle the job must be alive, have written nothing to stderr,
 * compute the same outputs as before, and have no thread of ours left.
 * (scripts/bench_attach.mjs runs the same checks over 200 cycles.)
 */
import { afterAll, describe, expect, it } from 'vitest';
import { attachDetach, checkUnharmed, NativeHost, STATES, startSafetyJob } from '../../scripts/lib/attach-safety.mjs';
import { pythonPath } from './jobs';

const CYCLES = 4;
const hosts: NativeHost[] = [];
afterAll(() => hosts.forEach((h) => h.kill()));

describe('attach safety', () => {
  it.each(STATES)('a job in state %s comes out of repeated attach and detach exactly as it went in', async (state) => {
    const host = new NativeHost();
    hosts.push(host);
    const job = await startSafetyJob(state, pythonPath());
    try {
      const baseline = job.records().filter((r: { pass?: number }) => r.pass !== undefined).at(-1).threads;
      for (let cycle = 0; cycle < CYCLES; cycle++) {
        const attached = await attachDetach(host, job);
        expect(attached.method).toBe('ptrace');
        const problems = await checkUnharmed(job, baseline);
        expect(problems, `cycle ${cycle}`).toEqual([]);
      }
      // Outputs per input position are the same from the first pass to the last.
      const passes = job.records().filter((r: { pass?: number }) => r.pass !== undefined);
      const byInput = new Map<number, Set<string>>();
      for (const r of passes) byInput.set(r.pass % 4, (byInput.get(r.pass % 4) ?? new Set()).add(r.out));
      expect([...byInput.values()].map((s) => s.size)).toEqual([1, 1, 1, 1]);
      if (state === 'threads') {
        // Every fifth pass the helper threads each got one more item, and each answered.
        const fed = passes.filter((r: { helpers?: unknown }) => r.helpers);
        expect(fed.length).toBeGreaterThan(3);
        for (const r of fed) {
          const items = (r.pass + 1) / 5;
          expect(r.helpers).toEqual({ queue: items, select: items, epoll: items });
        }
      }
    } finally {
      job.stop();
    }
  }, 240000);
});
