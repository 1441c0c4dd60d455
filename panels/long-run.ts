/**
 * The panel's state for routing over days: the history database's sessions (list, open, export,
 * import, delete), and the anomalies the host found in each job. Owned by the Store (store.longRun),
 * which hands it the host's messages about these and renders when it changes. DOM-free.
 */
import type { AnomalyFinding, HistoryDatabaseStatus, HistorySession, HostMessage, PanelRequest } from '../src/protocol/panel';
import { snapshotCapacity } from './engine/analyzer';
import { serializeRecording } from './engine/recording';

/** A session being received from the host, part by part. */
interface Loading {
  session: number;
  purpose: 'view' | 'export';
  info?: HistorySession;
  available?: number;
  messages: HostMessage[];
  from?: number;
  to?: number;
}

/** What the long-run state needs of the Store. */
export interface LongRunHost {
  send(request: PanelRequest): void;
  changed(): void;
  /** Open a stored session's messages as a job of its own (like a recording); returns its id. */
  openSession(info: HistorySession, messages: HostMessage[], range: { from?: number; to?: number; available?: number }): Promise<number | null>;
  /** Offer a file for saving (the toolbar's save link). */
  offer(name: string, text: string, messages: number): void;
  notice(message: string, hint?: string): void;
}

const NONE: AnomalyFinding[] = [];

/** Largest text per import message: the browser may send up to 64 MiB to the host. */
const IMPORT_PART_CHARS = 16 * 1024 * 1024;

export class LongRun {
  sessions: HistorySession[] = [];
  database: HistoryDatabaseStatus | null = null;
  /** The History view is shown in place of the selected job. */
  showHistory = false;
  loading: Loading | null = null;
  /** Anomaly findings per job id (live pid, or the id of an opened session or recording). */
  anomalies = new Map<number, AnomalyFinding[]>();

  constructor(private readonly host: LongRunHost) {}

  toggleHistory(show = !this.showHistory) {
    this.showHistory = show;
    if (show) this.refresh();
    this.host.changed();
  }

  refresh() {
    this.host.send({ type: 'sessions' });
  }

  /**
   * Open a session over [from, to] (probe clock, s since the epoch; default all), down-sampled to
   * what the analyzer keeps per job, so that every snapshot sent is one it holds.
   */
  open(session: HistorySession, from?: number, to?: number) {
    this.loading = { session: session.id, purpose: 'view', messages: [], from, to };
    this.host.send({ type: 'session-open', session: session.id, from, to, points: snapshotCapacity(Math.max(1, session.experts)) - 1, purpose: 'view' });
    this.host.changed();
  }

  /** Every snapshot of a session (or of a range of it) as a .moerec file. */
  exportSession(session: HistorySession, from?: number, to?: number) {
    this.loading = { session: session.id, purpose: 'export', messages: [], from, to };
    this.host.send({ type: 'session-open', session: session.id, from, to, purpose: 'export' });
    this.host.changed();
  }

  remove(session: number) {
    this.host.send({ type: 'session-delete', session });
  }

  /** A .moerec file's text into the history (the host checks it as the panel does when opening one). */
  importRecording(name: string, text: string) {
    const parts = Math.max(1, Math.ceil(text.length / IMPORT_PART_CHARS));
    for (let i = 0; i < parts; i++) {
      this.host.send({ type: 'session-import', name, part: i, done: i === parts - 1, text: text.slice(i * IMPORT_PART_CHARS, (i + 1) * IMPORT_PART_CHARS) });
    }
  }

  anomaliesOf(pid: number): AnomalyFinding[] {
    return this.anomalies.get(pid) ?? NONE; // the same empty list each time: views memoize on it
  }

  forget(pid: number) {
    this.anomalies.delete(pid);
  }

  /** Anomalies carried by a recording or stored session, under the id it is opened as. */
  adopt(pid: number, messages: HostMessage[]) {
    const found = messages.filter((m): m is Extract<HostMessage, { type: 'anomaly' }> => m.type === 'anomaly').map((m) => m.anomaly);
    if (found.length) this.anomalies.set(pid, found);
    else this.anomalies.delete(pid);
  }

  /** Take a host message if it is about the history or anomalies; returns whether it was. */
  receive(message: HostMessage): boolean {
    switch (message.type) {
      case 'sessions':
        this.sessions = message.sessions;
        this.database = message.database;
        this.host.changed();
        return true;
      case 'session-imported':
        this.host.notice(`${message.name} is in the history as session ${message.session}.`);
        return true;
      case 'anomaly': {
        const list = this.anomalies.get(message.pid) ?? [];
        this.anomalies.set(message.pid, [...list, message.anomaly]);
        this.host.changed();
        return true;
      }
      case 'session-data': {
        const l = this.loading;
        if (!l || l.session !== message.session || l.purpose !== message.purpose) return true;
        if (message.info) {
          l.info = message.info;
          l.available = message.available;
        }
        for (const m of message.messages) l.messages.push(m);
        if (message.done) void this.finish(l);
        return true;
      }
      case 'error':
        if (message.code === 'history_unavailable' && this.loading) {
          this.loading = null;
          this.host.changed();
        }
        return false; // the Store shows it as a notice
      default:
        return false;
    }
  }

  private async finish(l: Loading) {
    this.loading = null;
    if (!l.info) return this.host.changed();
    if (l.purpose === 'export') {
      const stamp = new Date(l.info.started).toISOString().replace(/[:.]/g, '-');
      const updates = l.messages.filter((m) => m.type === 'update').length;
      this.host.offer(`moe-${l.info.pid}-${stamp}-session-${l.info.id}.moerec`, serializeRecording(l.info.pid, l.info.started, l.messages), updates);
    } else {
      await this.host.openSession(l.info, l.messages, { from: l.from, to: l.to, available: l.available });
      this.showHistory = false;
    }
    this.host.changed();
  }
}
