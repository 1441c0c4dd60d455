/**
 * `moe-devtools record PID --seconds N -o run.moerec`: attach to a job through the host's own
 * attach path (the same Host the panel talks to), keep what the panel would record, detach, and
 * save a .moerec the panel and `report` can open. The job comes first: whatever happens here
 * (Ctrl-C, an error, this process being killed), the probe takes its hooks out as soon as the
 * connection ends. On Ctrl-C or SIGTERM what was recorded until then is saved; killed outright,
 * it is left in FILE.PID.partial.
 */
import * as fs from 'node:fs';
import type { JobUpdate } from '../../src/protocol/panel';
import { fmtInt } from '../../src/analysis';
import { hostSettingsFromEnv } from '../../native-host/src/env-settings';
import { Host } from '../../native-host/src/host';
import { probeSocketPath } from '../../native-host/src/paths';
import { readProcessFacts } from '../../native-host/src/processes';
import { serializeRecording } from '../../panels/engine/recording';
import { CliError, fsError } from '../errors';
import { prepareFile } from '../files';

export interface RecordOptions {
  pid: number;
  seconds: number;
  out: string;
  /** Counts snapshots per second kept in the recording (the host coalesces in between; counts are cumulative, so nothing is lost). */
  rateHz: number;
  /**
   * Seconds to keep retrying while the job is still starting up (torch not imported yet, or no
   * MoE model built yet), so that CI can start a job and record it without a race. 0: no retry.
   */
  waitS: number;
  force: boolean;
  /** Folder holding the moe_probe package, for jobs the host has to inject into. */
  probeRoot: string;
  /** Where progress and notes go (stderr). */
  log: NodeJS.WriteStream | { write(text: string): unknown; isTTY?: boolean };
}

export interface RecordResult {
  messages: number;
  updates: number;
  passes: number;
  seconds: number;
  bytes: number;
  /** Why recording ended before the time was up, if it did. */
  endedEarly: string | null;
}

/** The host's own history only answers panel queries, which the command line never makes. */
const CLI_HISTORY_BYTES = 4 * 1024 * 1024;

/** Attach errors that mean the job has not got that far yet (retried with --wait). */
const STILL_STARTING = new Set(['no_torch', 'no_moe']);

/** Whether the process runs `python -m moe_probe run ...` or `moe-probe run ...` (its probe will listen by itself). */
function startedUnderProbe(pid: number): boolean {
  const argv = readProcessFacts(pid)?.cmdline ?? [];
  const at = argv.findIndex((a, i) => (a === '-m' && argv[i + 1] === 'moe_probe') || /(^|\/)moe-probe$/.test(a));
  return at >= 0 && argv.slice(at).includes('run');
}

/** Ends the wait early on Ctrl-C or SIGTERM; recording then stops and saves. */
function interruption(): { promise: Promise<string>; dispose: () => void } {
  let dispose = () => {};
  const promise = new Promise<string>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => resolve(`stopped by ${signal}`);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    dispose = () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    };
  });
  return { promise, dispose };
}

export async function recordCommand(opts: RecordOptions): Promise<RecordResult> {
  prepareFile(opts.out, opts.force); // before attaching: a bad -o must not cost the job an attach

  // Messages go to disk as they arrive (a .moerec is a header line and one JSON line per message),
  // so a long recording takes no memory; the file gets its name only once it is complete.
  const partial = `${opts.out}.${process.pid}.partial`;
  let fd: number | null = null;
  const counted = { messages: 0, updates: 0, bytes: 0, detached: false };
  let latest: JobUpdate | null = null;
  let topK0 = 1;
  let attached = false;
  let onEnd: (why: string) => void = () => {};
  const ended = new Promise<string>((resolve) => (onEnd = resolve));
  const errors: Array<{ code: string; text: string }> = [];

  const host = new Host((m) => {
    if (!('pid' in m) || m.pid !== opts.pid) return;
    if (m.type === 'error') {
      errors.push({ code: m.code, text: m.hint ? `${m.message} ${m.hint}` : m.message });
      if (attached) opts.log.write(`\nmoe-devtools: note: ${m.message}\n`);
      return;
    }
    if (m.type === 'attached') {
      attached = true;
      topK0 = Math.max(1, m.models[0]?.layers[0]?.top_k ?? 1);
    }
    if (!attached) return; // 'attaching' comes before the recording starts
    if (fd === null) {
      fd = fs.openSync(partial, 'w', 0o644);
      write(serializeRecording(opts.pid, Date.now(), []).trimEnd()); // the header line
    }
    write(JSON.stringify(m));
    counted.messages += 1;
    if (m.type === 'update') {
      latest = m;
      counted.updates += 1;
    }
    if (m.type === 'detached') counted.detached = true;
    if (m.type === 'detached' && m.reason !== 'requested') onEnd(m.message ?? `the probe went away (${m.reason})`);
  }, {
    ...hostSettingsFromEnv(process.env, (line) => opts.log.write(`moe-devtools: note: ${line}\n`)),
    probeRoot: opts.probeRoot, updateHz: opts.rateHz, historyBytes: CLI_HISTORY_BYTES,
    groupRanks: false, // one process's own routing, even when it is one rank of a distributed job
  });
  const write = (line: string) => {
    const bytes = Buffer.from(`${line}\n`);
    fs.writeSync(fd!, bytes);
    counted.bytes += bytes.length;
  };

  const stop = interruption();
  try {
    const giveUp = Date.now() + opts.waitS * 1000;
    let said = '';
    for (;;) {
      // A job started under the probe opens its socket once torch is imported: wait for that
      // rather than inject a second probe into it in the meantime.
      const waitingForItsProbe = opts.waitS > 0 && startedUnderProbe(opts.pid) && !fs.existsSync(probeSocketPath(opts.pid));
      let error: { code: string; text: string } | undefined;
      if (waitingForItsProbe) {
        error = { code: 'no_probe_yet', text: 'its probe is not listening yet' };
      } else {
        errors.length = 0;
        await host.handle({ type: 'attach', pid: opts.pid });
        if (attached) break;
        error = errors[0];
        if (!error || !STILL_STARTING.has(error.code)) break;
      }
      if (Date.now() >= giveUp) break;
      if (error.text !== said) opts.log.write(`waiting up to ${opts.waitS} s for process ${opts.pid}: ${(said = error.text).split('. ')[0]}\n`);
      const interrupted = await Promise.race([new Promise<null>((r) => setTimeout(() => r(null), 500)), stop.promise]);
      if (interrupted) throw new CliError(`${interrupted} while waiting for process ${opts.pid}; nothing was recorded`);
    }
    if (!attached) {
      const why = errors[0]?.text ?? (fs.existsSync(probeSocketPath(opts.pid)) ? 'the host gave no reason' : 'its probe never started listening');
      throw new CliError(`cannot attach to process ${opts.pid}: ${why}`);
    }
    const started = Date.now();

    // A terminal gets one line rewritten in place; a log (CI) a line every 5 s.
    let printed = '';
    const writeProgress = (final = false) => {
      const u = latest as JobUpdate | null;
      const s = Math.min(opts.seconds, (Date.now() - started) / 1000);
      const tokens = u ? u.tokens?.[0] ?? u.counts.slice(0, u.widths[0]).reduce((a, b) => a + b, 0) / topK0 : 0;
      const line = `recording process ${opts.pid}: ${s.toFixed(1)} of ${opts.seconds} s, ${fmtInt(u?.passes ?? 0)} passes, ${fmtInt(tokens)} tokens`;
      if (opts.log.isTTY) opts.log.write(`\r${line}\x1b[K${final ? '\n' : ''}`);
      else if (line !== printed) opts.log.write(`${line}\n`);
      printed = line;
    };
    const progress = setInterval(() => writeProgress(), opts.log.isTTY ? 250 : 5000);
    writeProgress();
    const endedEarly = await Promise.race([
      new Promise<null>((r) => setTimeout(() => r(null), opts.seconds * 1000)),
      ended,
      stop.promise,
    ]);
    clearInterval(progress);
    writeProgress(true);

    if (!counted.detached) {
      await host.detach(opts.pid); // the final counts arrive before the probe's goodbye
      await waitFor(() => counted.detached, 5000);
    }
    host.stop();
    fs.closeSync(fd!);
    fd = null;
    if (!counted.updates) throw new CliError(`no routing counts arrived from process ${opts.pid}${endedEarly ? ` (${endedEarly})` : ''}; nothing was saved`);
    try {
      fs.renameSync(partial, opts.out);
    } catch (err) {
      throw fsError('write', opts.out, err);
    }
    const last = latest as JobUpdate | null;
    return {
      messages: counted.messages, updates: counted.updates, passes: last?.passes ?? 0,
      seconds: (Date.now() - started) / 1000, bytes: counted.bytes, endedEarly,
    };
  } finally {
    stop.dispose();
    host.stop(); // closes any connection still open: the probe then removes its hooks by itself
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(partial, { force: true }); // only left when something failed: nothing worth keeping
  }
}

async function waitFor(done: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

export function describeRecord(out: string, r: RecordResult): string {
  const size = r.bytes > 1e6 ? `${(r.bytes / 1e6).toFixed(1)} MB` : `${Math.ceil(r.bytes / 1e3)} kB`;
  const note = r.endedEarly ? ` (ended early: ${r.endedEarly})` : '';
  return `saved ${out}: ${r.seconds.toFixed(1)} s, ${fmtInt(r.passes)} passes, ${fmtInt(r.updates)} counts snapshots, ${size}${note}`;
}
