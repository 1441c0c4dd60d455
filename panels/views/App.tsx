/** The panel's layout: toolbar, jobs sidebar, the selected job's load view, status bar. */
import { useEffect, useMemo, useState } from 'preact/hooks';
import { layerCounts, type JobState, type Store } from '../store';
import { LoadChart } from './LoadChart';
import { ProcessList } from './ProcessList';

function useStore(store: Store) {
  const [, setTick] = useState(0);
  useEffect(() => store.subscribe(() => setTick((t) => t + 1)), [store]);
  return store.state;
}

export function App({ store }: { store: Store }) {
  const state = useStore(store);
  const job = state.selectedPid !== null ? state.jobs.get(state.selectedPid) : undefined;
  return (
    <div class="layout">
      <header class="toolbar" role="toolbar">
        <span class="title">MoE</span>
        <span class="divider" />
        {job && job.status === 'attached' && (
          <button data-testid="toolbar-detach" onClick={() => store.detach(job.pid)}>Detach {job.pid}</button>
        )}
        <span class="spacer" />
        <span class={`connection ${state.connection}`} data-testid="connection">{connectionLabel(state.connection)}</span>
      </header>
      <Notices store={store} />
      <div class="body">
        <ProcessList store={store} />
        <main class="content">{job ? <JobView store={store} job={job} /> : <Welcome />}</main>
      </div>
      <StatusBar job={job} />
    </div>
  );
}

function connectionLabel(state: string) {
  return state === 'connected' ? 'Host connected' : state === 'connecting' ? 'Connecting to host…' : 'Host disconnected';
}

function Welcome() {
  return (
    <div class="welcome">
      <h2>Watch a Mixture-of-Experts job route its tokens</h2>
      <p>Pick a Python process on the left and click <b>Attach</b>. The probe hooks the model's routers; <b>Detach</b> removes every hook and the job carries on unchanged.</p>
    </div>
  );
}

function Notices({ store }: { store: Store }) {
  const { notices } = store.state;
  if (!notices.length) return null;
  return (
    <div class="notices">
      {notices.map((n) => (
        <div class="notice" role="alert" data-testid="notice" data-code={n.code} key={n.id}>
          <div>
            <b>{n.pid !== undefined ? `Process ${n.pid}: ` : ''}</b>
            <span class="notice-message">{n.message}</span>
            {n.hint && <div class="hint">{n.hint}</div>}
          </div>
          <button class="icon-button" title="Dismiss" onClick={() => store.dismiss(n.id)}>✕</button>
        </div>
      ))}
    </div>
  );
}

function JobView({ store, job }: { store: Store; job: JobState }) {
  const model = job.models[0];
  const update = model ? job.latest.get(model.id) : undefined;
  const layer = Math.min(store.state.selectedLayer, Math.max(0, (model?.layers.length ?? 1) - 1));
  const counts = useMemo(() => (update ? layerCounts(update, layer) : []), [update, layer]);
  const info = model?.layers[layer];
  const total = counts.reduce((a, b) => a + b, 0);

  if (job.status === 'attaching') return <div class="welcome">Attaching to process {job.pid}{job.method ? ` via ${job.method}` : ''}…</div>;
  return (
    <div class="job" data-testid="job" data-pid={job.pid} data-status={job.status}>
      <div class="job-head">
        <span class="job-title">{model ? `${model.class}` : 'Model'} · pid {job.pid}</span>
        <span class="muted">{job.status === 'detached' ? `Detached: ${job.detachReason ?? ''}` : `attached via ${job.method} in ${job.attachMs} ms`}</span>
      </div>
      {model && (
        <div class="controls">
          <label>
            Layer{' '}
            <select data-testid="layer-select" value={layer} onChange={(e) => store.selectLayer(Number((e.target as HTMLSelectElement).value))}>
              {model.layers.map((l) => (
                <option value={l.index} key={l.index}>{l.index}: {l.name}</option>
              ))}
            </select>
          </label>
          {info && <span class="muted">{info.experts} experts · top-{info.top_k} · {info.arch}</span>}
        </div>
      )}
      {!update ? (
        <p class="empty">Waiting for the job's next forward pass…</p>
      ) : (
        <>
          <LoadChart counts={counts} title={`Tokens per expert, layer ${layer}`} />
          <table class="grid" data-testid="expert-table" data-layer={layer} data-passes={update.passes}>
            <thead><tr><th>Expert</th><th>Tokens</th><th>Share</th></tr></thead>
            <tbody>
              {counts.map((c, e) => (
                <tr key={e} data-expert={e}>
                  <td>{e}</td>
                  <td class="num" data-testid="expert-count">{c}</td>
                  <td class="num">{total ? ((100 * c) / total).toFixed(1) : '0.0'}%</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </div>
  );
}

function StatusBar({ job }: { job?: JobState }) {
  const update = job?.models[0] ? job.latest.get(job.models[0].id) : undefined;
  return (
    <footer class="statusbar" data-testid="statusbar">
      {update ? (
        <>
          <span data-testid="passes">{update.passes} passes</span>
          <span>{job!.updates} updates</span>
          <span title="Snapshots dropped on the way because a consumer was slower than the job">{update.dropped} dropped</span>
        </>
      ) : (
        <span>{job ? `pid ${job.pid}: ${job.status}` : 'Not attached'}</span>
      )}
    </footer>
  );
}
