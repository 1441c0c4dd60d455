/**
 * The panel's state: host connection, processes, and every attached job (and
 * every opened recording). Views read from here and never talk to the host
 * themselves. The store holds several jobs at once (ranks of one run, or two
 * runs to compare), each with its own analysis; the selected one is shown.
 *
 * Heavy work (windows, analyses) is done by an analyzer, normally the Web
 * Worker of panels/worker.ts behind comlink; the store only forwards messages
 * to it and keeps the latest result. DOM-free, so unit tests drive it directly.
 */
import type { ErrorCode, ExplainRequest, ExplanationMessage, HistorySession, HostMessage, JobUpdate, PanelRequest, ProcessInfo } from '../src/protocol/panel';
import type { FrameworkInfo, ModelInfo } from '../src/protocol/probe';
import { unknownLayer } from '../src/analysis/layers';
import type { Analysis, AnalysisSettings, Analyzer, TokenRow, WindowMode } from './engine/analyzer';
import type { ViewRequests } from './engine/view-data';
import { atNextFrame } from './frame-batch';
import { parseRecording, RecordingError, serializeRecording, withPid } from './engine/recording';
import { LongRun } from './long-run';
import { addExpertParams, addExplanation, complete, expertParamsAsMessages, explanationKey, type ExpertParamsResult, type RequestStatus } from './engine/requests';
import type { JobRanks } from './engine/ranks';

/** Least job time between two updates handed to the analysis (see queueUpdate): 20 a second at most. */
const UPDATE_SPACING_S = 0.05;

export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

export type ViewId = 'overview' | 'load' | 'heatmap' | 'flow' | 'activity' | 'layers' | 'tokens' | 'timeline' | 'coactivation' | 'profiler' | 'training' | 'experts' | 'compare' | 'anomalies' | 'ranks';

export const VIEWS: Array<{ id: ViewId; label: string }> = [
  { id: 'overview', label: 'Overview' },
  { id: 'load', label: 'Load' },
  { id: 'heatmap', label: 'Heatmap' },
  { id: 'flow', label: 'Flow' },
  { id: 'activity', label: '3D map' },
  { id: 'layers', label: 'Layers' },
  { id: 'tokens', label: 'Tokens' },
  { id: 'timeline', label: 'Timeline' },
  { id: 'coactivation', label: 'Co-activation' },
  { id: 'profiler', label: 'Profiler' },
  { id: 'training', label: 'Training' },
  { id: 'experts', label: 'Experts' },
  { id: 'compare', label: 'Compare' },
  { id: 'anomalies', label: 'Anomalies' },
  /** Distributed jobs only. */
  { id: 'ranks', label: 'Ranks' },
];

/**
 * The parts of an analysis only some views read (AnalysisSettings.include): the token records for
 * the Tokens view and the Heatmap's per-token map, the co-activation matrix for its view.
 */
export function analysisParts(view: ViewId): { tokens: boolean; coactivation: boolean } {
  return { tokens: view === 'tokens' || view === 'heatmap', coactivation: view === 'coactivation' };
}

export interface JobState {
  /** The process id; for an opened recording, a negative id of its own. */
  pid: number;
  status: 'attaching' | 'attached' | 'detached' | 'recording';
  method?: string;
  attachMs?: number;
  /** How the probe got in: what each attach method tried said, the one that worked last. */
  attachDetail?: string;
  python?: string;
  argv?: string[];
  /** The frameworks the job's models run on ("torch", "jax", ...; several joined by "+"), and their versions. */
  framework?: string;
  frameworkVersion?: string;
  /** Every framework the job has loaded, with its version. */
  frameworks?: FrameworkInfo[];
  models: ModelInfo[];
  /** The model shown, when the job holds several (e.g. a torch model and an ONNX Runtime session). */
  model?: number;
  /** Latest cumulative counts per model id. */
  latest: Map<number, JobUpdate>;
  /** Updates received, for the status bar's rate. */
  updates: number;
  detachReason?: string;
  /** The host's 'attached' message, kept to head recordings. */
  attachedMessage?: HostMessage;
  /** For an opened recording: its file name and the pid it was recorded from. */
  replay?: { file: string; pid: number };
  /** For a session opened from the history: which, over what range (probe clock), from how many snapshots. */
  session?: { info: HistorySession; from?: number; to?: number; available?: number };
  /** Explanations of routing decisions the probe answered (or the recording holds), newest last. */
  explanations?: ExplanationMessage[];
  /** The experts' weight analysis, as far as it has arrived. */
  expertParams?: ExpertParamsResult;
  /** A distributed job shown as one: its ranks (the host's last word on them). */
  ranks?: JobRanks;
  /** A process that is one rank of such a job: the job's id. */
  rankOf?: number;
}

/** A relay on another node this panel's host is connected to. */
export interface RelayState {
  address: string;
  node: string;
  status: 'connected' | 'closed';
  message?: string;
}

export interface Notice {
  id: number;
  pid?: number;
  code: ErrorCode | 'bad_recording';
  message: string;
  hint?: string;
}

/** What the user can set (persisted by the panel bootstrap). */
export interface UserSettings {
  windowMode: WindowMode;
  windowValue: number;
  /** Overrides of DEFAULT_THRESHOLDS.minTokens and minExpectedPerExpert; undefined keeps the default. */
  minTokens?: number;
  minExpectedPerExpert?: number;
}

export const DEFAULT_USER_SETTINGS: UserSettings = { windowMode: 'seconds', windowValue: 30 };

export interface RecordingState {
  pid: number;
  started: number;
  messages: HostMessage[];
}

export interface StoreState {
  connection: ConnectionState;
  processes: ProcessInfo[];
  jobs: Map<number, JobState>;
  selectedPid: number | null;
  selectedLayer: number;
  notices: Notice[];
  view: ViewId;
  settings: UserSettings;
  paused: boolean;
  /** Latest analysis per job. */
  analyses: Map<number, Analysis>;
  recording: RecordingState | null;
  /** The last finished recording, ready to save. */
  saved: { name: string; text: string; messages: number } | null;
  /** Token selected in the Tokens view: pass and position. */
  /** The token whose path is shown; `row` is kept so the path stays while its pass scrolls out of the stream. */
  token: { pass: number; index: number; row?: TokenRow } | null;
  /** Explain and expert-params requests by id: running, answered or refused. */
  requests: Map<number, RequestStatus>;
  relays: RelayState[];
  /** What each view asks the analysis for beyond the window (only the shown view's request is computed). */
  viewRequests: Partial<Record<ViewId, ViewRequests>>;
}

export type Send = (request: PanelRequest) => void;

/** The analyzer as the store sees it: the comlink proxy of the worker, or an Analyzer in-thread. */
export interface AnalyzerPort {
  ingest(message: HostMessage): unknown;
  ingestMany(messages: HostMessage[]): unknown;
  compare?: Analyzer['compare'];
  plan?: Analyzer['plan'];
  analyze(pid: number, settings: Partial<AnalysisSettings>): Promise<Analysis | null> | Analysis | null;
  clear(pid: number): unknown;
  forget(pid: number): unknown;
}

/** Most messages one recording keeps (bounded memory); recording stops there. */
export const MAX_RECORDED_MESSAGES = 200_000;

export class Store {
  state: StoreState;
  private listeners = new Set<() => void>();
  private nextNoticeId = 1;
  private nextReplayId = 1;
  private send: Send = () => {};
  private analyzer: AnalyzerPort | null = null;
  private dirty = new Set<number>();
  private busy = false;
  /** The state changed and the views are still to hear of it (setBeforeNextFrame). */
  private notifyPending = false;
  /** The newest update of each (pid, model) not yet handed to the analysis (queueUpdate). */
  private pendingUpdates = new Map<string, JobUpdate>();
  private forwardTimer: ReturnType<typeof setTimeout> | null = null;
  /** The probe time (JobUpdate.ts) of the last update handed to the analysis, per (pid, model). */
  private forwardedAt = new Map<string, number>();
  private persist: (s: UserSettings) => void = () => {};
  /** The history database's sessions and every job's anomalies (panels/long-run.ts). */
  readonly longRun: LongRun;
  private nextRequestId = 1;

  constructor(settings: Partial<UserSettings> = {}) {
    this.state = {
      connection: 'connecting',
      processes: [],
      jobs: new Map(),
      selectedPid: null,
      selectedLayer: 0,
      notices: [],
      view: 'overview',
      settings: { ...DEFAULT_USER_SETTINGS, ...settings },
      paused: false,
      analyses: new Map(),
      recording: null,
      saved: null,
      token: null,
      requests: new Map(),
      relays: [],
      viewRequests: {},
    };
    this.longRun = new LongRun({
      send: (r) => this.send(r),
      changed: () => this.set({}),
      openSession: (info, messages, range) => this.openMessages(`history session ${info.id}`, info.pid, messages, { session: { info, ...range } }),
      offer: (name, text, messages) => this.set({ saved: { name, text, messages } }),
      notice: (message, hint) => this.notice({ code: 'history_unavailable', message, hint }),
    });
  }

  /** The analyzer (for views that ask it for more than the periodic analysis). */
  get analysisPort(): AnalyzerPort | null {
    return this.analyzer;
  }

  connect(send: Send) {
    this.send = send;
  }

  useAnalyzer(analyzer: AnalyzerPort) {
    this.analyzer = analyzer;
  }

  onSettings(persist: (s: UserSettings) => void) {
    this.persist = persist;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private set(patch: Partial<StoreState>) {
    this.state = { ...this.state, ...patch };
    this.notifyPending = false;
    for (const listener of this.listeners) listener();
  }

  /**
   * The state changes now; the views hear of it before the next frame (atNextFrame). For what
   * updates change (30 a second: the latest counts, the update counter), so that a frame renders
   * once however many updates came since the last one. Anything else (user actions, analyses)
   * goes through set() and renders at once, with whatever updates are pending.
   */
  private setBeforeNextFrame(patch: Partial<StoreState>) {
    this.state = { ...this.state, ...patch };
    if (this.notifyPending) return;
    this.notifyPending = true;
    atNextFrame(() => {
      if (!this.notifyPending) return; // a set() since has told them
      this.notifyPending = false;
      for (const listener of this.listeners) listener();
    });
  }

  // -- actions from views --

  refresh() {
    this.send({ type: 'list' });
  }

  /** Attach to a probe listening on TCP on this machine (the local end of an SSH tunnel to a remote job). */
  connectRemote(address: string, token: string) {
    this.send({ type: 'connect', address: address.trim(), token: token.trim() });
  }

  /** Attach to every rank of a distributed job at once (the host attaches in parallel and shows them as one job). */
  attachJob(pids: number[]) {
    for (const pid of pids) if (!this.state.jobs.has(pid) || this.state.jobs.get(pid)!.status === 'detached') this.attach(pid);
  }

  /** Connect to a relay on another node (the local end of an SSH tunnel to its port). */
  connectRelay(address: string, token: string) {
    this.send({ type: 'connect-relay', address: address.trim(), token: token.trim() });
  }

  attach(pid: number) {
    const jobs = new Map(this.state.jobs);
    jobs.set(pid, { pid, status: 'attaching', models: [], latest: new Map(), updates: 0 });
    const analyses = new Map(this.state.analyses);
    analyses.delete(pid);
    this.dropUpdates(pid);
    void this.analyzer?.forget(pid);
    this.longRun.forget(pid);
    this.longRun.showHistory = false; // show the job being attached
    this.set({ jobs, analyses, selectedPid: pid, notices: this.state.notices.filter((n) => n.pid !== pid) });
    this.send({ type: 'attach', pid });
  }

  detach(pid: number) {
    this.send({ type: 'detach', pid });
  }

  /** Show another of the selected job's models. */
  selectModel(model: number) {
    const pid = this.state.selectedPid;
    if (pid === null) return;
    this.dirty.add(pid);
    this.patchJob(pid, { model });
    this.set({ selectedLayer: 0, token: null });
  }

  selectJob(pid: number) {
    this.dirty.add(pid);
    this.longRun.showHistory = false;
    this.set({ selectedPid: pid, token: null });
  }

  selectLayer(layer: number) {
    const pid = this.state.selectedPid;
    if (pid !== null) this.dirty.add(pid);
    // a distributed job's updates carry each rank's counts of one layer: this one from now on
    if (pid !== null && this.state.jobs.get(pid)?.ranks) this.send({ type: 'rank-layer', pid, layer });
    this.set({ selectedLayer: layer });
  }

  selectView(view: ViewId) {
    // The next analysis answers the view's request and carries the parts it reads (analysisParts).
    if (this.state.selectedPid !== null) this.dirty.add(this.state.selectedPid);
    this.set({ view });
  }

  /** A view's request to the analysis (flow layers, time buckets, ...); the next analysis answers it. */
  setViewRequest(view: ViewId, request: ViewRequests) {
    if (this.state.selectedPid !== null) this.dirty.add(this.state.selectedPid);
    this.set({ viewRequests: { ...this.state.viewRequests, [view]: request } });
  }

  selectToken(token: { pass: number; index: number; row?: TokenRow } | null) {
    this.set({ token });
  }

  /** Ask the selected job's probe why a sampled token went to an expert; returns the request id. */
  explain(request: Omit<ExplainRequest, 'type' | 'pid' | 'id' | 'model'>): number | null {
    const job = this.state.selectedPid !== null ? this.state.jobs.get(this.state.selectedPid) : undefined;
    if (!job || job.status !== 'attached' || !job.models[0]) return null;
    const id = this.nextRequestId++;
    this.track({ id, pid: job.pid, kind: 'explain', started: Date.now(), state: 'running', key: explanationKey(request) });
    this.send({ type: 'explain', pid: job.pid, id, model: job.models[0].id, ...request });
    return id;
  }

  /** Ask the selected job's probe for its experts' weight analysis (every MoE layer); returns the request id. */
  analyzeExperts(): number | null {
    const job = this.state.selectedPid !== null ? this.state.jobs.get(this.state.selectedPid) : undefined;
    if (!job || job.status !== 'attached' || !job.models[0]) return null;
    const id = this.nextRequestId++;
    this.track({ id, pid: job.pid, kind: 'expert-params', started: Date.now(), state: 'running' });
    this.send({ type: 'expert-params', pid: job.pid, id, model: job.models[0].id });
    return id;
  }

  private track(status: RequestStatus) {
    const requests = new Map(this.state.requests);
    requests.set(status.id, status);
    this.set({ requests });
  }

  private settle(id: number, patch: Partial<RequestStatus>) {
    const current = this.state.requests.get(id);
    if (current) this.track({ ...current, ...patch });
  }

  setSettings(patch: Partial<UserSettings>) {
    const settings = { ...this.state.settings, ...patch };
    if (!(settings.windowValue > 0)) settings.windowValue = DEFAULT_USER_SETTINGS.windowValue;
    for (const key of ['minTokens', 'minExpectedPerExpert'] as const) {
      const v = settings[key];
      if (v !== undefined && !(Number.isFinite(v) && v >= 0)) delete settings[key];
    }
    for (const pid of this.state.jobs.keys()) this.dirty.add(pid);
    this.persist(settings);
    this.set({ settings });
  }

  togglePause() {
    if (this.state.selectedPid !== null) this.dirty.add(this.state.selectedPid);
    this.set({ paused: !this.state.paused });
  }

  /** Forget the selected job's history: windows restart from the next snapshot. */
  clear() {
    const pid = this.state.selectedPid;
    if (pid === null) return;
    this.forwardUpdates();
    void this.analyzer?.clear(pid);
    const analyses = new Map(this.state.analyses);
    analyses.delete(pid);
    this.dirty.add(pid);
    this.set({ analyses, token: null });
  }

  startRecording() {
    const pid = this.state.selectedPid;
    const job = pid !== null ? this.state.jobs.get(pid) : undefined;
    if (!job || job.status !== 'attached') return;
    // The attach message first, so that a replay knows the model's layers and top-k; then what
    // the probe explained and found in the weights so far, so that the recording shows them too.
    const messages: HostMessage[] = job.attachedMessage ? [job.attachedMessage] : [];
    messages.push(...(job.explanations ?? []), ...(job.expertParams ? expertParamsAsMessages(job.expertParams, job.pid) : []));
    this.set({ recording: { pid: job.pid, started: Date.now(), messages }, saved: null });
  }

  stopRecording() {
    const rec = this.state.recording;
    if (!rec) return;
    const stamp = new Date(rec.started).toISOString().replace(/[:.]/g, '-');
    this.set({
      recording: null,
      saved: { name: `moe-${rec.pid}-${stamp}.moerec`, text: serializeRecording(rec.pid, rec.started, rec.messages), messages: rec.messages.length },
    });
  }

  /** Open a recording as a job of its own. A corrupt or foreign file changes nothing but a notice. */
  async openRecording(file: string, text: string): Promise<boolean> {
    let recording;
    try {
      recording = parseRecording(text);
    } catch (err) {
      const message = err instanceof RecordingError ? err.message : `Could not read the recording: ${(err as Error).message}`;
      this.notice({ code: 'bad_recording', message: `${file}: ${message}`, hint: 'Recordings are the .moerec files saved by the Record button.' });
      return false;
    }
    return (await this.openMessages(file, recording.header.pid, recording.messages)) !== null;
  }

  /**
   * Show recorded messages (a recording's, or a stored session's) as a job of its own with a
   * negative id. A stored session opened from part way through has no zero baseline: its first
   * snapshot is the baseline then, so "since attach" means since the range began.
   */
  async openMessages(file: string, recordedPid: number, recorded: HostMessage[], extra: Partial<JobState> = {}): Promise<number | null> {
    const id = -this.nextReplayId++;
    const messages = withPid(recorded, id);
    if (!messages.some((m) => m.type === 'update')) {
      this.notice({ code: 'bad_recording', message: `${file}: holds no routing counts in that range.` });
      return null;
    }
    const attached = messages.find((m) => m.type === 'attached');
    const latest = new Map<number, JobUpdate>();
    let updates = 0;
    for (const m of messages) {
      if (m.type === 'update') {
        latest.set(m.model, m);
        updates++;
      }
    }
    let models = attached && attached.type === 'attached' ? attached.models : [];
    if (!models.length) {
      const u = [...latest.values()][0]!;
      models = [{ id: u.model, class: 'Recorded model', model_type: '', device: '', dtype: '', layers: u.widths.map((w, i) => unknownLayer(i, w)) }];
    }
    let explanations: ExplanationMessage[] | undefined;
    let expertParams: ExpertParamsResult | undefined;
    let ranks: JobRanks | undefined;
    for (const m of messages) {
      if (m.type === 'layers') models = models.map((x) => (x.id === m.model ? { ...x, layers: m.layers } : x));
      if (m.type === 'explanation') explanations = addExplanation(explanations, m);
      if (m.type === 'expert-params') expertParams = addExpertParams(expertParams, m);
      if (m.type === 'ranks') ranks = { key: m.key, label: m.label, worldSize: m.worldSize, ranks: m.ranks };
    }
    const session = extra.session;
    const firstUpdate = messages.findIndex((m) => m.type === 'update');
    if (session?.from !== undefined && session.info.firstTs !== null && session.from > session.info.firstTs) {
      await this.analyzer?.ingestMany(messages.slice(0, firstUpdate + 1));
      await this.analyzer?.clear(id); // the range's first snapshot is its baseline
      await this.analyzer?.ingestMany(messages.slice(firstUpdate + 1));
    } else {
      await this.analyzer?.ingestMany(messages);
    }
    this.longRun.adopt(id, messages);
    const jobs = new Map(this.state.jobs);
    const framework = attached && attached.type === 'attached'
      ? { framework: attached.framework, frameworkVersion: attached.frameworkVersion, frameworks: attached.frameworks }
      : {};
    jobs.set(id, { pid: id, status: 'recording', models, latest, updates, replay: { file, pid: recordedPid }, method: 'recording', explanations, expertParams, ...framework, ...(ranks ? { ranks } : {}), ...extra });
    this.dirty.add(id);
    this.set({ jobs, selectedPid: id, token: null });
    await this.tick();
    return id;
  }

  closeJob(pid: number) {
    const jobs = new Map(this.state.jobs);
    jobs.delete(pid);
    const analyses = new Map(this.state.analyses);
    analyses.delete(pid);
    this.dropUpdates(pid);
    void this.analyzer?.forget(pid);
    this.longRun.forget(pid);
    this.set({ jobs, analyses, selectedPid: this.state.selectedPid === pid ? null : this.state.selectedPid });
  }

  dismiss(id: number) {
    this.set({ notices: this.state.notices.filter((n) => n.id !== id) });
  }

  notice(n: Omit<Notice, 'id'>) {
    this.set({ notices: [...this.state.notices.slice(-4), { ...n, id: this.nextNoticeId++ }] });
  }

  // -- updates to the analysis --
  //
  // Updates carry cumulative counts, so the newest of several says all they say together. The
  // panel counts and shows every update, and hands the analysis (a worker) at most one per
  // UPDATE_SPACING_S of the job's own clock for each model: posting 32,768 counts to the worker
  // 30 times a second cost the main thread more than the analysis gains (it keeps snapshots
  // 0.2 s apart). An update that comes sooner waits (replaced by any newer one) and goes after
  // UPDATE_SPACING_S of wall time, or before any other message of the job, so the analysis sees
  // the messages in the order they came; an analysis starts with the newest update in.

  private queueUpdate(message: JobUpdate) {
    const key = `${message.pid}:${message.model}`;
    const last = this.forwardedAt.get(key);
    if (last === undefined || !(message.ts - last < UPDATE_SPACING_S)) {
      this.pendingUpdates.delete(key); // older than this one, and said by it
      this.forward(key, message);
      return;
    }
    this.pendingUpdates.set(key, message);
    if (this.forwardTimer === null) this.forwardTimer = setTimeout(() => this.forwardUpdates(), 1000 * UPDATE_SPACING_S);
  }

  private forward(key: string, message: JobUpdate) {
    this.forwardedAt.set(key, message.ts);
    void this.analyzer?.ingest(message);
  }

  private forwardUpdates() {
    if (this.forwardTimer !== null) clearTimeout(this.forwardTimer);
    this.forwardTimer = null;
    const pending = [...this.pendingUpdates];
    this.pendingUpdates.clear();
    for (const [key, m] of pending) this.forward(key, m);
  }

  private dropUpdates(pid: number) {
    for (const [key, m] of this.pendingUpdates) if (m.pid === pid) this.pendingUpdates.delete(key);
    for (const key of this.forwardedAt.keys()) if (key.startsWith(`${pid}:`)) this.forwardedAt.delete(key);
  }

  private toAnalyzer(message: HostMessage) {
    if (this.pendingUpdates.size) this.forwardUpdates();
    void this.analyzer?.ingest(message);
  }

  /** Analyse the selected job if anything changed; the panel calls this on a timer. */
  async tick(): Promise<void> {
    const pid = this.state.selectedPid;
    if (pid === null || !this.analyzer || this.busy) return;
    // Paused, the views hold their analysis, unless the view now shown reads a part it was taken
    // without (analysisParts): then one more, with every part, is taken and held.
    const paused = this.state.paused;
    const need = analysisParts(this.state.view);
    const have = this.state.analyses.get(pid)?.parts;
    const missing = have !== undefined && ((need.tokens && !have.tokens) || (need.coactivation && !have.coactivation));
    if (paused ? !missing : !this.dirty.has(pid)) return;
    if (this.pendingUpdates.size) this.forwardUpdates();
    this.busy = true;
    this.dirty.delete(pid);
    try {
      const s = this.state.settings;
      const result = await this.analyzer.analyze(pid, {
        windowMode: s.windowMode,
        windowValue: s.windowValue,
        thresholds: { minTokens: s.minTokens, minExpectedPerExpert: s.minExpectedPerExpert },
        layer: this.state.selectedLayer,
        tokenPasses: 300,
        tokenBudget: 400,
        model: this.state.jobs.get(pid)?.model,
        views: this.state.viewRequests[this.state.view],
        include: paused ? {} : need,
      });
      if (result && this.state.jobs.has(pid)) {
        const analyses = new Map(this.state.analyses);
        analyses.set(pid, result);
        this.set({ analyses });
      }
    } finally {
      this.busy = false;
    }
  }

  // -- events from the host --

  setConnection(connection: ConnectionState) {
    this.set({ connection });
  }

  receive(message: HostMessage) {
    if ('pid' in message && message.pid !== undefined) {
      const rec = this.state.recording;
      if (rec && rec.pid === message.pid && message.type !== 'error' && message.type !== 'refused') {
        rec.messages.push(message);
        if (rec.messages.length >= MAX_RECORDED_MESSAGES) this.stopRecording();
      }
    }
    if (this.longRun.receive(message)) return;
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
        this.toAnalyzer(message);
        this.patchJob(message.pid, {
          status: 'attached', method: message.method, attachMs: message.ms, python: message.python,
          framework: message.framework, frameworkVersion: message.frameworkVersion, frameworks: message.frameworks,
          argv: message.argv, models: message.models, attachedMessage: message,
          attachDetail: message.attempts?.map((a) => `${a.method}: ${a.message}`).join('\n'),
        });
        if (message.method === 'tcp' || message.job) this.set({ selectedPid: message.pid });
        if (message.job) this.send({ type: 'rank-layer', pid: message.pid, layer: this.state.selectedLayer });
        if (message.rank && message.rank.group >= 0) this.patchJob(message.pid, { rankOf: message.rank.group });
        // What the probe can see only partly (CUDA graph replays, torch.compile) is said at once.
        for (const w of message.warnings ?? []) this.notice({ pid: message.pid, code: 'partial_visibility', message: w.message });
        this.refresh();
        return;
      case 'update': {
        const job = this.state.jobs.get(message.pid);
        if (!job) return;
        this.queueUpdate(message);
        this.dirty.add(message.pid);
        const latest = new Map(job.latest);
        latest.set(message.model, message);
        return this.patchJob(message.pid, { latest, updates: job.updates + 1 }, 'before next frame');
      }
      case 'layers': {
        // what the probe learned from the first calls: how each layer's routing is read
        const job = this.state.jobs.get(message.pid);
        if (!job) return;
        this.toAnalyzer(message);
        this.dirty.add(message.pid);
        return this.patchJob(message.pid, { models: job.models.map((m) => (m.id === message.model ? { ...m, layers: message.layers } : m)) });
      }
      case 'ranks': {
        if (!this.state.jobs.has(message.pid)) return;
        this.toAnalyzer(message);
        this.dirty.add(message.pid);
        return this.patchJob(message.pid, { ranks: { key: message.key, label: message.label, worldSize: message.worldSize, ranks: message.ranks } });
      }
      case 'relay': {
        const relays = [...this.state.relays.filter((r) => r.address !== message.address), { address: message.address, node: message.node, status: message.status, message: message.message }];
        return this.set({ relays });
      }
      case 'losses':
      case 'tokens': {
        if (!this.state.jobs.has(message.pid)) return;
        this.toAnalyzer(message);
        this.dirty.add(message.pid);
        return;
      }
      case 'explanation': {
        const job = this.state.jobs.get(message.pid);
        if (!job) return;
        this.settle(message.id, { state: 'done' });
        return this.patchJob(message.pid, { explanations: addExplanation(job.explanations, message) });
      }
      case 'expert-params': {
        const job = this.state.jobs.get(message.pid);
        if (!job) return;
        const expertParams = addExpertParams(job.expertParams, message);
        if (complete(expertParams)) this.settle(message.id, { state: 'done' });
        return this.patchJob(message.pid, { expertParams });
      }
      case 'refused':
        this.settle(message.id, { state: 'refused', code: message.code, message: message.message });
        return;
      case 'detached':
        for (const r of this.state.requests.values()) {
          if (r.pid === message.pid && r.state === 'running') this.settle(r.id, { state: 'refused', code: 'detached', message: 'The job was detached before the probe answered.' });
        }
        if (this.state.recording?.pid === message.pid) this.stopRecording();
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

  private patchJob(pid: number, patch: Partial<JobState>, when: 'now' | 'before next frame' = 'now') {
    const jobs = new Map(this.state.jobs);
    const job = jobs.get(pid) ?? { pid, status: 'attaching' as const, models: [], latest: new Map(), updates: 0 };
    jobs.set(pid, { ...job, ...patch });
    if (when === 'now') this.set({ jobs });
    else this.setBeforeNextFrame({ jobs });
  }
}
