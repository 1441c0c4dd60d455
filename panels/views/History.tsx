/** History: the sessions the host stored, to reopen (all or a time range), export as .moerec, import or delete. */
import { useRef, useState } from 'preact/hooks';
import type { HistorySession } from '../../src/protocol/panel';
import type { Store } from '../store';
import { int } from './format';

const when = (ms: number) => new Date(ms).toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** Seconds as "1 h 02 min", "3 min 05 s" or "12.3 s". */
export function duration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '–';
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${String(m % 60).padStart(2, '0')} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

const bytes = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`);
const span = (s: HistorySession) => (s.firstTs !== null && s.lastTs !== null ? s.lastTs - s.firstTs : NaN);

export function History({ store }: { store: Store }) {
  const lr = store.longRun;
  const db = lr.database;
  const [picked, setPicked] = useState<number | null>(null);
  const fromRef = useRef<HTMLInputElement>(null);
  const toRef = useRef<HTMLInputElement>(null);
  const fileInput = useRef<HTMLInputElement>(null);
  const session = lr.sessions.find((s) => s.id === picked) ?? null;
  /** The range typed in, as probe-clock seconds; undefined ends mean the session's own. */
  const range = (s: HistorySession): [number | undefined, number | undefined] => {
    const read = (el: HTMLInputElement | null) => (el && el.value.trim() !== '' && Number.isFinite(Number(el.value)) ? Number(el.value) : undefined);
    const from = read(fromRef.current);
    const to = read(toRef.current);
    const t0 = s.firstTs ?? 0;
    return [from !== undefined ? t0 + from : undefined, to !== undefined ? t0 + to : undefined];
  };
  const importFile = async (e: Event) => {
    const input = e.target as HTMLInputElement;
    const file = input.files?.[0];
    input.value = '';
    if (file) lr.importRecording(file.name, await file.text());
  };
  return (
    <div class="history" data-testid="history-view">
      <div class="history-head">
        <h3>History</h3>
        <span class="muted" data-testid="history-db" title={db?.path}>
          {db ? (db.enabled ? `${db.path} · ${bytes(db.fileBytes)} of ${bytes(db.maxBytes)} · sessions kept ${db.maxDays} days` : 'history is off') : 'asking the host…'}
          {db?.droppedWrites ? ` · ${int(db.droppedWrites)} snapshots not written (the disk was behind)` : ''}
        </span>
        <span class="spacer" />
        <button data-testid="history-refresh" onClick={() => lr.refresh()}>Refresh</button>
        <button data-testid="history-import" disabled={!db?.enabled} title="Store a .moerec recording in the history" onClick={() => fileInput.current?.click()}>Import .moerec…</button>
        <input type="file" ref={fileInput} data-testid="history-import-file" accept=".moerec,.jsonl,.json,text/plain" hidden onChange={importFile} />
      </div>
      {db?.error && (
        <div class="notice" role="alert" data-testid="history-error" data-code={db.error.code}>
          <div><span class="notice-message">{db.error.message}</span>{db.error.hint && <div class="hint">{db.error.hint}</div>}</div>
        </div>
      )}
      {lr.loading && <p class="muted" data-testid="history-loading">Reading session {lr.loading.session} ({int(lr.loading.messages.length)} messages so far)…</p>}
      {db?.enabled && !lr.sessions.length && <p class="empty">No session yet: attach to a job and its routing is kept here.</p>}
      {lr.sessions.length > 0 && (
        <div class="table-scroll">
          <table class="grid sessions" data-testid="sessions">
            <thead><tr><th>Job</th><th>Model</th><th>Started</th><th>Duration</th><th>Passes</th><th>Anomalies</th><th>Size</th><th /></tr></thead>
            <tbody>
              {lr.sessions.map((s) => (
                <tr key={s.id} data-testid="session-row" data-session={s.id} data-pid={s.pid} class={s.id === picked ? 'selected' : ''} onClick={() => setPicked(s.id)}>
                  <td class="session-job" title={s.name}>
                    <span class="pid">{s.pid}</span> {s.source === 'import' ? <span class="tag">imported</span> : s.ended === null ? <span class="tag">recording</span> : null}
                    <div class="cmdline">{s.name}</div>
                  </td>
                  <td>{s.modelClass || '–'}<div class="muted">{s.layers} MoE layers</div></td>
                  <td class="num">{when(s.started)}</td>
                  <td class="num" data-testid="session-duration">{duration(span(s))}</td>
                  <td class="num">{int(s.passes)}</td>
                  <td class="num">{s.anomalies ? <span class="warn">{s.anomalies}</span> : 0}</td>
                  <td class="num">{bytes(s.bytes)}</td>
                  <td class="row-actions">
                    <button class="primary" data-testid="session-open" disabled={!!lr.loading} onClick={(e) => { e.stopPropagation(); lr.open(s); }}>Open</button>
                    <button data-testid="session-export" disabled={!!lr.loading} title="Every snapshot as a .moerec file" onClick={(e) => { e.stopPropagation(); lr.exportSession(s); }}>Export</button>
                    <button class="icon-button" data-testid="session-delete" title="Delete this session" disabled={s.ended === null}
                      onClick={(e) => { e.stopPropagation(); if (confirm(`Delete session ${s.id} (process ${s.pid})?`)) lr.remove(s.id); }}>✕</button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {session && (
        <div class="controls range-form" data-testid="session-range">
          <span>Session {session.id}, {duration(span(session))}: open or export seconds</span>
          <input type="number" min="0" step="any" ref={fromRef} data-testid="range-from" placeholder="0" aria-label="From (s since the session began)" />
          <span>to</span>
          <input type="number" min="0" step="any" ref={toRef} data-testid="range-to" placeholder={span(session).toFixed(0)} aria-label="To (s since the session began)" />
          <button data-testid="range-open" disabled={!!lr.loading} onClick={() => lr.open(session, ...range(session))}>Open range</button>
          <button data-testid="range-export" disabled={!!lr.loading} onClick={() => lr.exportSession(session, ...range(session))}>Export range</button>
          <span class="muted">Long ranges come down-sampled: whole snapshots spread evenly over the range, so totals stay exact.</span>
        </div>
      )}
    </div>
  );
}
