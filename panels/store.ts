/**
 * The panel's state: host connection, processes, and every attached job.
 * Views read from here and never talk to the host themselves. The store holds
 * several jobs at once (ranks of one run, or two runs to compare).
 */
import type { ErrorCode, HostMessage, JobUpdate, PanelRequest, ProcessInfo } from '../src/protocol/panel';
import type { ModelInfo } from '../src/protocol/probe';

export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

export interface JobState {
  pid: number;
  status: 'attaching' | 'attached' | 'detached';
  method?: string;
  attachMs?: number;
  python?: string;
  argv?: string[];
  models: ModelInfo[];
  /** Latest cumulative counts per model id. */
  latest: Map<number, JobUpdate>;
  /** Updates received, for the status bar's rate. */
  updates: number;
  detachReason?: string;
}

export interface Notice {
  id: number;
  pid?: number;
  code: ErrorCode;
  message: string;
  hint?: string;
}

export interface StoreState {
  connection: ConnectionState;
  processes: ProcessInfo[];
  jobs: Map<number, JobState>;
  selectedPid: number | null;
  selectedLayer: number;
  notices: Notice[];
}

export type Send = (request: PanelRequest) => void;

export class Store {
  state: StoreState = {
    connection: 'connecting',
    processes: [],
    jobs: new Map(),
    selectedPid: null,
    selectedLayer: 0,
    notices: [],
  };
  private listeners = new Set<() => void>();
  private nextNoticeId = 1;
  private send: Send = () => {};

  connect(send: Send) {
    this.send = send;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private set(patch: Partial<StoreState>) {
    this.state = { ...this.state, ...patch };
    for (const listener of this.listeners) listener();
  }

  // -- actions from views --

  refresh() {
    this.send({ type: 'list' });
  }

  attach(pid: number) {
    const jobs = new Map(this.state.jobs);
    jobs.set(pid, { pid, status: 'attaching', models: [], latest: new Map(), updates: 0 });
    this.set({ jobs, selectedPid: pid, notices: this.state.notices.filter((n) => n.pid !== pid) });
    this.send({ type: 'attach', pid });
  }

  detach(pid: number) {
    this.send({ type: 'detach', pid });
  }

  selectJob(pid: number) {
    this.set({ selectedPid: pid });
  }

  selectLayer(layer: number) {
    this.set({ selectedLayer: layer });
  }

  dismiss(id: number) {
    this.set({ notices: this.state.notices.filter((n) => n.id !== id) });
  }

  // -- events from the host --

  setConnection(connection: ConnectionState) {
    this.set({ connection });
  }

  receive(message: HostMessage) {
    switch (message.type) {
      case 'hello':
        this.set({ connection: 'connected' });
        return;
      case 'processes':
        this.set({ processes: message.processes });
        return;
      case 'attaching':
        return this.patchJob(message.pid, { status: 'attaching', method: message.method });
      case 'attached':
        this.patchJob(message.pid, {
          status: 'attached', method: message.method, attachMs: message.ms, python: message.python,
          argv: message.argv, models: message.models,
        });
        this.refresh();
        return;
      case 'update': {
        const job = this.state.jobs.get(message.pid);
        if (!job) return;
        const latest = new Map(job.latest);
        latest.set(message.model, message);
        return this.patchJob(message.pid, { latest, updates: job.updates + 1 });
      }
      case 'detached':
        this.patchJob(message.pid, { status: 'detached', detachReason: message.message ?? message.reason });
        this.refresh();
        return;
      case 'error': {
        const notice: Notice = { id: this.nextNoticeId++, pid: message.pid, code: message.code, message: message.message, hint: message.hint };
        const jobs = new Map(this.state.jobs);
        if (message.pid !== undefined) {
          const job = jobs.get(message.pid);
          if (job && job.status === 'attaching') jobs.delete(message.pid);
        }
        const connection = message.code === 'host_unavailable' ? 'disconnected' : this.state.connection;
        this.set({ jobs, connection, notices: [...this.state.notices.slice(-4), notice] });
        return;
      }
    }
  }

  private patchJob(pid: number, patch: Partial<JobState>) {
    const jobs = new Map(this.state.jobs);
    const job = jobs.get(pid) ?? { pid, status: 'attaching' as const, models: [], latest: new Map(), updates: 0 };
    jobs.set(pid, { ...job, ...patch });
    this.set({ jobs });
  }
}

/** Counts of one layer from a cumulative update. */
export function layerCounts(update: JobUpdate, layer: number): number[] {
  return update.counts.slice(layer * update.experts, (layer + 1) * update.experts);
}
