/**
 * The third-party example client (examples/read_counts.py, standard library only) against a
 * live job through the real native host: the counts it prints must be what the job routed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, findWindow, pythonPath, startTinyJob, type Job } from './jobs';

const EXAMPLE = path.join(ROOT, 'examples/read_counts.py');
let job: Job | undefined;
afterAll(async () => job?.stop());

describe('examples/read_counts.py', () => {
  it('is under 50 lines', () => {
    expect(fs.readFileSync(EXAMPLE, 'utf8').trimEnd().split('\n').length).toBeLessThan(50);
  });

  it('reads a live job\'s counts from the host, equal to what the job routed', async () => {
    // A job with a library-mode probe, so that the host attaches over the socket.
    const prelude = `import sys\nsys.path.insert(0, ${JSON.stringify(path.join(ROOT, 'native-host'))})\nimport moe_probe\nmoe_probe.attach()`;
    job = await startTinyJob([], 8, { prelude });
    const run = spawnSync(pythonPath(), [EXAMPLE, String(job.pid), '4'], { encoding: 'utf8', timeout: 60_000 });
    expect(run.status, run.stderr).toBe(0);
    const lines = run.stdout.trim().split('\n').map((l) => /^pass (\d+) layer (\d+): (\[.*\])$/.exec(l)!);
    expect(lines.every(Boolean)).toBe(true);
    const layers = new Set(lines.map((m) => Number(m[2])));
    expect(lines.length).toBe(4 * layers.size);
    const last = lines.at(-1)!;
    const passes = Number(last[1]);
    expect(passes).toBeGreaterThan(0);
    for (const m of lines.filter((x) => Number(x[1]) === passes)) {
      const counts = JSON.parse(m[3]!) as number[];
      expect(findWindow(job.passes(), Number(m[2]), passes, counts), `layer ${m[2]}: ${counts}`).toBeGreaterThanOrEqual(0);
    }
    // Closing stdin detached the host: the job runs on.
    expect(job.process.exitCode).toBeNull();
  });
});
