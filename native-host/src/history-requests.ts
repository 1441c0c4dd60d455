/**
 * The panel's requests about the history database: list sessions, open one (in parts that each
 * fit in a native message), delete one, import a .moerec file. Answers go through `send`; a
 * failure is an 'error' message that says what happened and what to do.
 */
import type { HistoryDatabaseStatus, HostMessage, PanelRequest } from '../../src/protocol/panel';
import type { HistoryService } from './history-service';

type HistoryRequest = Extract<PanelRequest, { type: 'sessions' | 'session-open' | 'session-delete' | 'session-import' }>;

/** Where the history would be, and why it is off, when the host was started without one. */
export interface HistoryOff {
  path: string;
  reason: string;
}

export class HistoryRequests {
  /** Parts of .moerec files being imported, by file name. */
  private imports = new Map<string, string[]>();

  constructor(
    private readonly history: HistoryService | undefined,
    private readonly off: HistoryOff,
    private readonly send: (m: HostMessage) => void,
    /** JSON bytes one message may carry. */
    private readonly budget: number,
  ) {}

  private status(): HistoryDatabaseStatus {
    if (this.history) return this.history.status();
    return {
      path: this.off.path, enabled: false, fileBytes: 0, maxBytes: 0, maxDays: 0, droppedWrites: 0,
      error: { code: 'off', message: this.off.reason, hint: 'Unset MOE_DEVTOOLS_DB (or point it at a file) in the environment the browser starts the host from.' },
    };
  }

  private fail(err: Error & { code?: string; hint?: string }, what: string) {
    this.send({ type: 'error', code: 'history_unavailable', message: `${what}: ${err.message}`, ...(err.hint ? { hint: err.hint } : {}) });
  }

  async handle(request: HistoryRequest): Promise<void> {
    const history = this.history;
    if (history) await history.whenReady();
    if (request.type === 'sessions') {
      const sessions = history?.enabled ? await history.list().catch((err) => (this.fail(err, 'Could not list the history'), [])) : [];
      this.send({ type: 'sessions', sessions, database: this.status() });
      return;
    }
    if (!history?.enabled) {
      const s = this.status();
      this.send({ type: 'error', code: 'history_unavailable', message: s.error?.message ?? 'History is off.', ...(s.error?.hint ? { hint: s.error.hint } : {}) });
      return;
    }
    switch (request.type) {
      case 'session-open': {
        const purpose = request.purpose ?? 'view';
        let part = 0;
        try {
          await history.read(request.session, { from: request.from, to: request.to, points: request.points }, this.budget, (p) => {
            this.send({
              type: 'session-data', session: request.session, purpose, part: part++, done: false, messages: p.messages,
              ...(p.first ? { info: p.info as Extract<HostMessage, { type: 'session-data' }>['info'], available: p.available } : {}),
            });
          });
          this.send({ type: 'session-data', session: request.session, purpose, part: part++, done: true, messages: [] });
        } catch (err) {
          this.fail(err as Error, `Could not open session ${request.session}`);
        }
        return;
      }
      case 'session-delete':
        await history.remove(request.session).catch((err) => this.fail(err, `Could not delete session ${request.session}`));
        return this.handle({ type: 'sessions' });
      case 'session-import': {
        const parts = this.imports.get(request.name) ?? [];
        if (request.part !== parts.length) {
          this.imports.delete(request.name);
          this.send({ type: 'error', code: 'bad_request', message: `Import of ${request.name}: part ${request.part} came where part ${parts.length} was expected; nothing was imported.` });
          return;
        }
        parts.push(request.text);
        if (!request.done) {
          this.imports.set(request.name, parts);
          return;
        }
        this.imports.delete(request.name);
        try {
          const session = await history.importRecording(request.name, parts.join(''));
          this.send({ type: 'session-imported', session, name: request.name });
        } catch (err) {
          this.fail(err as Error, `Could not import ${request.name}`);
        }
        return this.handle({ type: 'sessions' });
      }
    }
  }
}
