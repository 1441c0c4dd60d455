/**
 * The host's side of the history database: hands every attached job's frames to the database
 * thread (history-worker.ts) and asks it for sessions. Nothing here waits on the disk: frames are
 * posted and forgotten. Should the database fall behind (a slow disk), counts snapshots are skipped
 * rather than queued without bound (counts are cumulative, so the totals stay exact; only the time
 * resolution of that stretch is coarser) and counted in droppedWrites; token records are written at
 * a bounded rate (MOE_DEVTOOLS_DB_TOKENS_PER_S passes a second), since the live panel gets them all.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { HistoryDatabaseStatus, HistorySession, HostMessage } from '../../src/protocol/panel';
import type { LayerInfo, ProbeCounts, ProbeTokens } from '../../src/protocol/probe';
import type { Anomaly } from '../../src/analysis/anomaly';
import type { ReadOptions, RetentionPolicy } from './history-db';
import type { FromWorker, ToWorker } from './history-worker';

export interface HistoryServiceOptions {
  file: string;
  maxBytes: number;
  maxDays: number;
  /** Sampled token passes written per second per job. */
  tokenPassesPerS: number;
  /** Most counts snapshots written per second per job (Infinity: every one the probe sends). */
  snapshotsPerS?: number;
  /** The worker's script (dist/host/history-worker.cjs in a build). */
  workerFile?: string;
  log?: (line: string) => void;
}

/** Counts snapshots posted and not yet committed before new ones are skipped (about 8 s at 30 Hz). */
const MAX_PENDING_COUNTS = 256;

type Pending = { resolve: (v: unknown) => void; reject: (e: Error & { code?: string; hint?: string }) => void; onPart?: (part: Extract<FromWorker, { op: 'part' }>) => void };

export class HistoryService {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private pendingCounts = 0;
  private fileBytes = 0;
  private droppedWrites = 0;
  private error: HistoryDatabaseStatus['error'];
  private opened = false;
  /** Refused or failed for good: writes go nowhere. Until the worker answers 'open', writes queue behind it. */
  private off = false;
  private readonly ready: Promise<void>;
  private readonly lastTokens = new Map<number, number>();
  /** Per job: when the last snapshot was written, and the newest one skipped since (written at the end). */
  private readonly lastCounts = new Map<number, { ts: number; skipped: ProbeCounts | null }>();
  private policy: RetentionPolicy;
  private closed = false;

  constructor(private readonly opts: HistoryServiceOptions) {
    this.policy = { maxBytes: opts.maxBytes, maxAgeMs: opts.maxDays * 86_400_000 };
    this.worker = new Worker(opts.workerFile ?? path.join(__dirname, 'history-worker.cjs'));
    this.worker.unref(); // the host exits when its work is done, database thread or not
    let settle: () => void = () => {};
    this.ready = new Promise((r) => (settle = r));
    this.worker.on('message', (m: FromWorker) => {
      if (m.op === 'opened') {
        this.opened = true;
        this.fileBytes = m.fileBytes;
        settle();
      } else if (m.op === 'failed') {
        this.error = m.error;
        if (!this.opened || m.error.code === 'corrupt') {
          this.opened = false;
          this.off = true;
        }
        this.opts.log?.(`history database: ${m.error.message}`);
        settle();
      } else if (m.op === 'written') {
        this.pendingCounts = Math.max(0, this.pendingCounts - m.counts);
        this.fileBytes = m.fileBytes;
      } else if (m.op === 'part') {
        this.pending.get(m.id)?.onPart?.(m);
      } else if (m.op === 'reply') {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (!p) return;
        if (m.error) p.reject(Object.assign(new Error(m.error.message), { code: m.error.code, hint: m.error.hint }));
        else p.resolve(m.result);
      }
    });
    this.worker.on('error', (err) => {
      this.error = { code: 'io', message: `The history database thread failed: ${err.message}`, hint: 'History is off until the host restarts.' };
      this.opened = false;
      this.off = true;
      settle();
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
    this.post({ op: 'open', file: opts.file, policy: this.policy });
  }

  /** Resolves once the database is open (or refused: see status().error). */
  whenReady(): Promise<void> {
    return this.ready;
  }

  /** Open and writing (false before the worker has opened the file, and once it was refused). */
  get enabled(): boolean {
    return this.opened && !this.off;
  }

  status(): HistoryDatabaseStatus {
    return {
      path: this.opts.file, enabled: this.opened, fileBytes: this.fileBytes, maxBytes: this.policy.maxBytes,
      maxDays: this.policy.maxAgeMs / 86_400_000, droppedWrites: this.droppedWrites, ...(this.error ? { error: this.error } : {}),
    };
  }

  get stats(): { fileBytes: number; droppedWrites: number } {
    return { fileBytes: this.fileBytes, droppedWrites: this.droppedWrites };
  }

  private post(m: ToWorker) {
    if (!this.closed) this.worker.postMessage(m);
  }

  startSession(key: number, pid: number, attached: Extract<HostMessage, { type: 'attached' }>) {
    if (this.off) return;
    this.post({ op: 'start', key, pid, name: attached.argv.join(' ') || `process ${pid}`, started: Date.now(), attached });
  }

  counts(key: number, frame: ProbeCounts) {
    if (this.off) return;
    const last = this.lastCounts.get(key);
    if (last && frame.ts - last.ts < 1 / (this.opts.snapshotsPerS ?? Infinity)) {
      // under the write rate: kept only if it turns out to be the job's last (cumulative, so nothing is lost)
      last.skipped = frame;
      return;
    }
    if (this.pendingCounts >= MAX_PENDING_COUNTS) {
      this.droppedWrites++;
      return;
    }
    this.lastCounts.set(key, { ts: frame.ts, skipped: null });
    this.pendingCounts++;
    this.post({ op: 'counts', key, frame });
  }

  tokens(key: number, ts: number, frame: ProbeTokens) {
    if (this.off || this.pendingCounts >= MAX_PENDING_COUNTS) return;
    const last = this.lastTokens.get(key) ?? -Infinity;
    if (ts - last < 1 / this.opts.tokenPassesPerS) return;
    this.lastTokens.set(key, ts);
    this.post({ op: 'tokens', key, ts, frame });
  }

  layers(key: number, model: number, layers: LayerInfo[]) {
    if (!this.off) this.post({ op: 'layers', key, model, layers });
  }

  anomaly(key: number, model: number, anomaly: Anomaly) {
    if (!this.off) this.post({ op: 'anomaly', key, model, anomaly });
  }

  endSession(key: number) {
    const skipped = this.lastCounts.get(key)?.skipped;
    if (skipped && !this.off) this.post({ op: 'counts', key, frame: skipped }); // the final totals
    this.lastCounts.delete(key);
    this.lastTokens.delete(key);
    if (!this.off) this.post({ op: 'end', key, ended: Date.now() });
  }

  setRetention(maxBytes?: number, maxDays?: number) {
    if (maxBytes !== undefined) this.policy.maxBytes = maxBytes;
    if (maxDays !== undefined) this.policy.maxAgeMs = maxDays * 86_400_000;
    this.post({ op: 'policy', policy: this.policy });
  }

  private request<T>(make: (id: number) => ToWorker, onPart?: Pending['onPart']): Promise<T> {
    if (!this.opened) {
      const e = this.error ?? { code: 'io', message: 'History is off.', hint: '' };
      return Promise.reject(Object.assign(new Error(e.message), e));
    }
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, onPart });
      this.post(make(id));
    });
  }

  list(): Promise<HistorySession[]> {
    return this.request((id) => ({ op: 'list', id }));
  }

  /** A session's messages in parts of about partBytes of JSON each. */
  read(session: number, options: ReadOptions, partBytes: number, onPart: (part: Extract<FromWorker, { op: 'part' }>) => void): Promise<void> {
    return this.request((id) => ({ op: 'read', id, session, options, partBytes }), onPart);
  }

  remove(session: number): Promise<void> {
    return this.request((id) => ({ op: 'delete', id, session }));
  }

  importRecording(name: string, text: string): Promise<number> {
    return this.request((id) => ({ op: 'import', id, name, text }));
  }

  /** Commit what is queued and close the file (waits at most timeoutMs). */
  async close(timeoutMs = 3000): Promise<void> {
    if (this.closed) return;
    const done = new Promise<void>((resolve) => {
      this.worker.on('message', (m: FromWorker) => m.op === 'closed' && resolve());
      this.worker.once('exit', () => resolve());
    });
    this.post({ op: 'close' });
    this.closed = true;
    await Promise.race([done, new Promise((r) => setTimeout(r, timeoutMs))]);
    await this.worker.terminate();
  }
}
