/** The panel's layout: toolbar, jobs sidebar, view tabs over the selected job, status bar. */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { metricsCsv, metricsJson } from '../engine/export';
import { layerLabel, routingDescription } from '../../src/analysis';
import type { Analysis } from '../engine/analyzer';
import { VIEWS, type JobState, type Store } from '../store';
import { Coactivation } from './Coactivation';
import { Experts } from './Experts';
import { fmt, frameworkName, int } from './format';
import { Activity3D } from './Activity3D';
import { Flow } from './Flow';
import { Heatmap } from './Heatmap';
import { Layers } from './Layers';
import { Load } from './Load';
import { Overview } from './Overview';
import { Visibility } from './Visibility';
import { ProcessList } from './ProcessList';
import { Profiler } from './Profiler';
import { Ranks } from './Ranks';
import { Timeline } from './Timeline';
import { Tokens } from './Tokens';
import { Training } from './Training';
import { Anomalies } from './Anomalies';
import { Compare } from './Compare';
import { History } from './History';
import { Placement } from './Placement';

function useStore(store: Store) {
  const [, setTick] = useState(0);
  useEffect(() => store.subscribe(() => setTick((t) => t + 1)), [store]);
  return store.state;
}

/** Save text through an <a download> blob link. */
function download(name: string, text: string, type: string) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function App({ store }: { store: Store }) {
  const state = useStore(store);
  const job = state.selectedPid !== null ? state.jobs.get(state.selectedPid) : undefined;
  const analysis = job ? state.analyses.get(job.pid) : undefined;
  const [settingsOpen, setSettingsOpen] = useState(false);
  const fileInput = useRef<HTMLInputElement>(null);
  const recording = state.recording;
  const canRecord = job?.status === 'attached';
  const openFile = async (e: Event) => {
    const input = e.target as HTMLInputElement;
    const file = input.files?.[0];
    input.value = '';
    if (!file) return;
    let text: string;
    try {
      text = await file.text();
    } catch (err) {
      store.notice({ code: 'bad_recording', message: `${file.name}: could not be read (${(err as Error).message})` });
      return;
    }
    await store.openRecording(file.name, text);
  };
  return (
    <div class="layout">
      <header class="toolbar" role="toolbar">
        <button class={`tool record ${recording ? 'on' : ''}`} data-testid="record" disabled={!canRecord && !recording}
          title={recording ? 'Stop recording' : 'Record this job’s messages'} onClick={() => (recording ? store.stopRecording() : store.startRecording())}>
          <span class="record-dot" />
        </button>
        <button class={`tool ${state.paused ? 'on' : ''}`} data-testid="pause" title={state.paused ? 'Resume live updates' : 'Pause the views (data keeps being collected)'} onClick={() => store.togglePause()}>
          {state.paused ? '▶' : '❚❚'}
        </button>
        <button class="tool" data-testid="clear" title="Clear: restart the window from now" disabled={!job} onClick={() => store.clear()}>⊘</button>
        <span class="divider" />
        <button class="tool text" data-testid="open-recording" title="Open a recording (.moerec)" onClick={() => fileInput.current?.click()}>Open recording</button>
        <input type="file" ref={fileInput} data-testid="recording-file" accept=".moerec,.jsonl,.json,application/json,text/plain" hidden onChange={openFile} />
        {state.saved && <SaveLink saved={state.saved} />}
        <span class="divider" />
        <button class="tool text" data-testid="export-csv" disabled={!analysis} title="Export the current metrics as CSV" onClick={() => analysis && download(`moe-${analysis.pid}-metrics.csv`, metricsCsv(analysis), 'text/csv')}>CSV</button>
        <button class="tool text" data-testid="export-json" disabled={!analysis} title="Export the current metrics as JSON" onClick={() => analysis && download(`moe-${analysis.pid}-metrics.json`, metricsJson(analysis, { explanations: job?.explanations, expertParams: job?.expertParams && [...job.expertParams.layers.values()] }), 'application/json')}>JSON</button>
        <span class="divider" />
        <button class={`tool text ${store.longRun.showHistory ? 'on' : ''}`} data-testid="history-toggle" title="Sessions kept in the history database"
          onClick={() => store.longRun.toggleHistory()}>History</button>
        <span class="divider" />
        <button class={`tool ${settingsOpen ? 'on' : ''}`} data-testid="settings-toggle" title="Window and thresholds" onClick={() => setSettingsOpen(!settingsOpen)}>⚙</button>
        <span class="spacer" />
        {recording && <span class="rec-label" data-testid="recording-status">● REC {recording.messages.length}</span>}
        {job && job.status === 'attached' && (
          <button data-testid="toolbar-detach" onClick={() => store.detach(job.pid)}>{job.ranks ? 'Detach all ranks' : `Detach ${job.pid}`}</button>
        )}
      </header>
      {settingsOpen && <SettingsBar store={store} />}
      <Notices store={store} />
      <div class="body">
        <div class="sidebar">
          <ProcessList store={store} />
          <Recordings store={store} />
        </div>
        <main class="content">{store.longRun.showHistory ? <History store={store} /> : job ? <JobView store={store} job={job} analysis={analysis} /> : <Welcome />}</main>
      </div>
      <StatusBar store={store} job={job} analysis={analysis} />
    </div>
  );
}

/** The last recording as an <a download> blob link. */
function SaveLink({ saved }: { saved: { name: string; text: string; messages: number } }) {
  const url = useMemo(() => URL.createObjectURL(new Blob([saved.text], { type: 'application/x-ndjson' })), [saved]);
  useEffect(() => () => URL.revokeObjectURL(url), [url]);
  return (
    <a class="tool text" data-testid="recording-link" href={url} download={saved.name} data-messages={saved.messages} title={`${saved.messages} messages`}>
      Save recording
    </a>
  );
}

function SettingsBar({ store }: { store: Store }) {
  const s = store.state.settings;
  const num = (e: Event) => {
    const v = (e.target as HTMLInputElement).value.trim();
    return v === '' ? undefined : Number(v);
  };
  return (
    <div class="settings-bar" data-testid="settings">
      <label>
        Window{' '}
        <input type="number" min="1" data-testid="setting-window-value" value={s.windowValue} disabled={s.windowMode === 'all'}
          onChange={(e) => store.setSettings({ windowValue: num(e) ?? 30 })} />
        <select data-testid="setting-window-mode" value={s.windowMode} onChange={(e) => store.setSettings({ windowMode: (e.target as HTMLSelectElement).value as 'seconds' })}>
          <option value="seconds">seconds</option>
          <option value="tokens">tokens</option>
          <option value="all">since attach</option>
        </select>
      </label>
      <label title="Least tokens in the window before dead-expert, imbalance and collapse verdicts (default 1000)">
        Min tokens <input type="number" min="0" data-testid="setting-min-tokens" placeholder="1000" value={s.minTokens ?? ''} onChange={(e) => store.setSettings({ minTokens: num(e) })} />
      </label>
      <label title="Least expected assignments per expert under even routing before a dead-expert verdict (default 50)">
        Min per expert <input type="number" min="0" data-testid="setting-min-per-expert" placeholder="50" value={s.minExpectedPerExpert ?? ''} onChange={(e) => store.setSettings({ minExpectedPerExpert: num(e) })} />
      </label>
    </div>
  );
}

function Recordings({ store }: { store: Store }) {
  const replays = [...store.state.jobs.values()].filter((j) => j.replay);
  if (!replays.length) return null;
  return (
    <div class="recordings">
      <div class="sidebar-head"><span>Recordings</span></div>
      <ul class="process-list">
        {replays.map((j) => (
          <li key={j.pid} class={j.pid === store.state.selectedPid ? 'selected' : ''} data-testid="replay-item" onClick={() => store.selectJob(j.pid)}>
            <div class="process-row">
              <span class="pid">{j.replay!.pid}</span>
              <span class="tags"><span class="tag">recording</span></span>
              <button class="icon-button" title="Close" onClick={(e) => { e.stopPropagation(); store.closeJob(j.pid); }}>✕</button>
            </div>
            <div class="cmdline" title={j.replay!.file}>{j.replay!.file}</div>
          </li>
        ))}
      </ul>
    </div>
  );
}

function Welcome() {
  return (
    <div class="welcome">
      <h2>Watch a Mixture-of-Experts job route its tokens</h2>
      <p>Pick a Python process on the left and click <b>Attach</b>. The probe hooks the model's routers; <b>Detach</b> removes every hook and the job carries on unchanged.</p>
      <p>Or <b>Open recording</b> to look at a session recorded earlier.</p>
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
            <b>{n.pid === undefined ? '' : store.state.jobs.get(n.pid)?.ranks ? `${store.state.jobs.get(n.pid)!.ranks!.label}: ` : `Process ${n.pid}: `}</b>
            <span class="notice-message">{n.message}</span>
            {n.hint && <div class="hint">{n.hint}</div>}
          </div>
          <button class="icon-button" title="Dismiss" onClick={() => store.dismiss(n.id)}>✕</button>
        </div>
      ))}
    </div>
  );
}

function JobView({ store, job, analysis: a }: { store: Store; job: JobState; analysis?: Analysis }) {
  const model = job.models.find((m) => m.id === job.model) ?? job.models[0];
  const layer = Math.min(store.state.selectedLayer, Math.max(0, (model?.layers.length ?? a?.layers ?? 1) - 1));
  const info = model?.layers[layer];
  const view = store.state.view === 'ranks' && !job.ranks ? 'overview' : store.state.view;
  const token = store.state.token;
  const anomalies = store.longRun.anomaliesOf(job.pid);
  // The views change only with the analysis (at most 5 Hz), the layer or the selected token,
  // not with each update message (30 Hz) that re-renders the status bar: the same element
  // lets Preact skip the view's subtree (strict-equality bailout).
  const content = useMemo(() => (a ? (
    <div class="view" data-testid={`view-${view}`}>
      {view === 'overview' && <Overview store={store} a={a} />}
      {view === 'load' && <Load store={store} a={a} layer={layer} />}
      {view === 'load' && <Placement store={store} pid={job.pid} layer={layer} modelClass={model?.class ?? ''} />}
      {view === 'heatmap' && <Heatmap store={store} a={a} layer={layer} />}
      {view === 'flow' && <Flow store={store} a={a} layer={layer} />}
      {view === 'activity' && <Activity3D store={store} a={a} layer={layer} />}
      {view === 'layers' && <Layers store={store} a={a} />}
      {view === 'tokens' && <Tokens store={store} a={a} />}
      {view === 'timeline' && <Timeline a={a} />}
      {view === 'coactivation' && <Coactivation a={a} layer={layer} />}
      {view === 'profiler' && <Profiler a={a} />}
      {view === 'training' && <Training a={a} />}
      {view === 'ranks' && <Ranks a={a} />}
      {view === 'experts' && <Experts store={store} a={a} layer={layer} />}
      {view === 'compare' && <Compare store={store} job={job} />}
      {view === 'anomalies' && <Anomalies store={store} anomalies={anomalies} />}
    </div>
  ) : null), [store, a, view, layer, token, anomalies, job.pid]);

  if (job.status === 'attaching') return <div class="welcome">Attaching to process {job.pid}{job.method ? ` via ${job.method}` : ''}…</div>;
  const title = job.session ? `History session ${job.session.info.id} of pid ${job.session.info.pid}` : job.replay ? `Recording of pid ${job.replay.pid}` : job.ranks ? `${job.ranks.worldSize} ranks` : `pid ${job.pid}`;
  const status = job.replay ? job.replay.file : job.status === 'detached' ? `Detached: ${job.detachReason ?? ''}`
    : job.ranks ? `${job.ranks.ranks.filter((r) => r.status === 'attached').length} of ${job.ranks.worldSize} ranks streaming · ${job.ranks.label}`
      : `attached via ${job.method} in ${job.attachMs} ms`;
  return (
    <div class="job" data-testid="job" data-pid={job.pid} data-status={job.status}>
      <div class="job-head">
        <span class="job-title">{model ? `${model.class}` : 'Model'} · {title}</span>
        {job.framework && <FrameworkTag job={job} framework={model?.framework ?? job.framework} />}
        <span class="muted" title={job.attachDetail} data-testid="attach-status">{status}</span>
      </div>
      <Visibility update={model ? job.latest.get(model.id) : undefined} />
      {job.models.length > 1 && (
        <div class="controls">
          <label>
            Model{' '}
            <select data-testid="model-select" value={model ? String(model.id) : undefined} onChange={(e) => store.selectModel(Number((e.target as HTMLSelectElement).value))}>
              {job.models.map((m) => (
                <option value={String(m.id)} key={m.id}>{m.class} ({frameworkName(m.framework ?? job.framework ?? '')}, {m.layers.length} MoE layers)</option>
              ))}
            </select>
          </label>
        </div>
      )}
      <nav class="tabs" role="tablist">
        {VIEWS.filter((v) => v.id !== 'ranks' || job.ranks).map((v) => (
          <button key={v.id} role="tab" aria-selected={view === v.id} class={`tab ${view === v.id ? 'selected' : ''}`} data-testid={`tab-${v.id}`} onClick={() => store.selectView(v.id)}>
            {v.label}
            {v.id === 'overview' && a && a.findings.length > 0 && <span class="badge" data-testid="findings-count">{a.findings.length}</span>}
            {v.id === 'anomalies' && anomalies.length > 0 && <span class="badge" data-testid="anomalies-count">{anomalies.length}</span>}
          </button>
        ))}
      </nav>
      {model && (view === 'load' || view === 'coactivation' || view === 'ranks' || view === 'experts') && (
        <div class="controls">
          <label>
            Layer{' '}
            <select data-testid="layer-select" value={String(layer)} onChange={(e) => store.selectLayer(Number((e.target as HTMLSelectElement).value))}>
              {model.layers.map((l) => (
                <option value={String(l.index)} key={l.index}>{layerLabel(l)}</option>
              ))}
            </select>
          </label>
          {info && <span class="muted" data-testid="layer-routing">{routingDescription(info)}</span>}
        </div>
      )}
      {content ?? <p class="empty">Waiting for the job's next forward pass…</p>}
    </div>
  );
}

function StatusBar({ store, job, analysis: a }: { store: Store; job?: JobState; analysis?: Analysis }) {
  const { connection, paused } = store.state;
  const update = job?.models[0] ? job.latest.get(job.models[0].id) : job ? [...job.latest.values()][0] : undefined;
  const lastPoint = a ? a.timeline.length - 1 : -1;
  return (
    <footer class="statusbar" data-testid="statusbar">
      <span class={`connection ${connection}`} data-testid="connection">{connectionLabel(connection)}</span>
      {update ? (
        <>
          <span data-testid="passes">{update.passes} passes</span>
          <span data-testid="passes-per-s">{fmt(a?.timeline.passesPerS[lastPoint] ?? NaN, 1)} passes/s</span>
          <span data-testid="tokens-per-s">{int(a?.timeline.tokensPerS[lastPoint] ?? NaN)} tokens/s</span>
          <span>{job!.updates} updates</span>
          <span title="Snapshots dropped on the way because a consumer was slower than the job" class={update.dropped ? 'warn' : ''}>{update.dropped} dropped</span>
          {update.droppedTokens ? <span class="warn" title="Per-token records dropped on the way">{update.droppedTokens} token records dropped</span> : null}
          {a && <span data-testid="window-info">window: {a.window.passes} passes, {int(a.window.tokens)} tokens</span>}
          {paused && <span class="warn">paused</span>}
        </>
      ) : (
        <span>{job ? `pid ${job.pid}: ${job.status}` : 'Not attached'}</span>
      )}
    </footer>
  );
}

/** The framework the shown model runs on, with its version (hover: every framework the job loaded). */
function FrameworkTag({ job, framework }: { job: JobState; framework: string }) {
  const version = job.frameworks?.find((f) => f.name === framework)?.version ?? (framework === job.framework ? job.frameworkVersion : undefined);
  const loaded = job.frameworks?.map((f) => `${frameworkName(f.name)} ${f.version}`).join(', ');
  return (
    <span class="tag" data-testid="job-framework" data-framework={framework} title={loaded ? `Loaded in the job: ${loaded}` : undefined}>
      {frameworkName(framework)}{version ? ` ${version}` : ''}
    </span>
  );
}

function connectionLabel(state: string) {
  return state === 'connected' ? 'Host connected' : state === 'connecting' ? 'Connecting to host…' : 'Host disconnected';
}
