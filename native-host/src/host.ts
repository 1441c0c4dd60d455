/**
 * The host's core: answers panel requests, attaches to jobs, and relays their
 * routing to the panel as coalesced updates at a bounded rate.
 *
 * It is independent of stdio so tests can drive it directly; main.ts wires it
 * to native messaging.
 */
import * as fs from 'node:fs';
import { HANDLE_BASE, MAX_HOST_MESSAGE_BYTES, PANEL_PROTOCOL_VERSION, type AttachAttempt, type AttachMethod, type HostMessage, type JobUpdate, type LossesUpdate, type PanelRequest, type TokenUpdate } from '../../src/protocol/panel';
import { HEALTH_COLUMNS, countsToNumbers, float32s, float64s, int32s, layerOffsets, type ModelInfo, type ProbeCounts, type ProbeFrame, type ProbeHello, type ProbeLosses, type ProbeTokens } from '../../src/protocol/probe';
import { AttachError, HINTS } from './attach-errors';
import { localJobKey } from './dist-discovery';
import { DEFAULT_HISTORY_BYTES, History } from './history';
import { HistoryRequests, type HistoryOff } from './history-requests';
import type { HistoryService } from './history-service';
import { JobObserver } from './job-observer';
import { attachMethods, type InjectMethod, injectProbe, preflight, waitForProbe } from './inject';
import { probeSocketPath, socketDir } from './paths';
import { ProbeClient } from './probe-client';
import { expertParamsFrame, expertParamsMessages, explainFrame, explanationMessage, refusedMessage } from './requests';
import { listTorchProcesses, processExists } from './processes';
import { RankGroups } from './rank-groups';
import { UpdatePacer } from './update-pacer';
import { RelayLinks } from './relay-client';

export interface HostOptions {
  /** Folder that holds the moe_probe package (dist/host in a build). */
  probeRoot: string;
  socketDir?: string;
  /** Most updates per second sent to the panel, per job. */
  updateHz?: number;
  attachTimeoutMs?: number;
  gdbPath?: string;
  /** Attach methods to try, in order (default: attachMethods for the process). */
  methods?: InjectMethod[];
  /** Byte cap of the history kept for the panel's window queries. */
  historyBytes?: number;
  /**
   * True while the browser is behind reading our output: updates are then coalesced
   * and token records dropped (and counted) rather than queued without bound.
   */
  congested?: () => boolean;
  /** The persistent history (a database thread); absent: no history, and historyOff says why. */
  history?: HistoryService;
  historyOff?: HistoryOff;
  /** Run the online change detection on every attached job (default true). */
  detectAnomalies?: boolean;
  /**
   * Show the ranks of a distributed job as one job (rank-groups.ts; default true). A relay and
   * the command line's record, which stream each process on its own, turn it off.
   */
  groupRanks?: boolean;
}

interface Job {
  pid: number;
  client: ProbeClient;
  method: AttachMethod;
  models: ModelInfo[];
  /** Latest counts per model not yet sent to the panel (older ones are coalesced away). */
  pending: Map<number, ProbeCounts>;
  coalesced: number;
  detaching: boolean;
  /** Reached over TCP: its pid is on another machine, so no local process checks. */
  remote: boolean;
  /** Writes the job to the history database and watches it for anomalies. */
  observer: JobObserver;
  /** The distributed job it is a rank of (a RankGroups handle), when shown as one. */
  group?: number;
}

export class Host {
  private jobs = new Map<number, Job>();
  private attaching = new Set<number>();
  private readonly pacer: UpdatePacer;
  private watchdog: NodeJS.Timeout;
  private stats: NodeJS.Timeout;
  private readonly dir: string;
  readonly history: History;
  private readonly historyRequests: HistoryRequests;
  droppedToPanel = 0;
  private nextHandle = HANDLE_BASE;
  private readonly groups: RankGroups;
  private readonly relays: RelayLinks;

  constructor(
    private readonly send: (message: HostMessage) => void,
    private readonly opts: HostOptions,
  ) {
    this.dir = opts.socketDir ?? socketDir();
    this.history = new History(opts.historyBytes ?? DEFAULT_HISTORY_BYTES);
    this.historyRequests = new HistoryRequests(opts.history, opts.historyOff ?? { path: '', reason: 'History is off for this host.' }, send, MESSAGE_BUDGET);
    this.pacer = new UpdatePacer(() => this.flushUpdates(), opts.updateHz ?? 30);
    this.groups = new RankGroups(send, () => this.nextHandle++, (handle, via) => void (via ? this.relays.detach(handle) : this.detach(handle)), () => this.pacer.request());
    this.relays = new RelayLinks(send, this.groups, () => this.nextHandle++);
    // A job killed hard may leave its socket open for a moment; poll so the panel hears within a second.
    this.watchdog = setInterval(() => this.checkJobsAlive(), 250);
    this.stats = setInterval(() => this.sendStats(), 1000);
  }

  private congested(): boolean {
    return this.opts.congested?.() ?? false;
  }

  private sendStats() {
    if (!this.jobs.size) return;
    this.send({
      type: 'host-stats', rssBytes: process.memoryUsage.rss(), historyBytes: this.history.used,
      historyCapBytes: this.history.capBytes, historyEvicted: this.history.evicted, droppedToPanel: this.droppedToPanel,
      ...(this.opts.history?.enabled ? { database: this.opts.history.stats } : {}),
    });
  }

  async handle(request: PanelRequest): Promise<void> {
    switch (request.type) {
      case 'hello':
        this.send({ type: 'hello', version: PANEL_PROTOCOL_VERSION, host: 'moe-devtools-host', platform: process.platform });
        return;
      case 'list':
        this.send({ type: 'processes', processes: listTorchProcesses(new Set(this.jobs.keys())) });
        return;
      case 'attach':
        return this.attach(request.pid);
      case 'detach':
        return this.detach(request.pid);
      case 'connect':
        return this.connectTcp(request.address, request.token);
      case 'connect-relay':
        return this.relays.connect(request.address, request.token);
      case 'rank-layer':
        this.groups.setDetailLayer(request.pid, request.layer);
        return;
      case 'history':
        return this.sendHistory(request.pid, request.from, request.to, request.layer);
      case 'token-pass': {
        const found = this.history.query(request.pid, 'tokens').filter((e) => e.frame.pass === request.pass);
        if (!found.length) {
          this.send({ type: 'error', pid: request.pid, code: 'bad_request', message: `No token record of pass ${request.pass} is held for process ${request.pid}.` });
        }
        for (const entry of found) for (const part of splitTokenUpdate(tokenUpdate(request.pid, entry.frame), MESSAGE_BUDGET)) this.send(part);
        return;
      }
      case 'sessions':
      case 'session-open':
      case 'session-delete':
      case 'session-import':
        return this.historyRequests.handle(request);
      case 'explain':
      case 'expert-params': {
        // Answered by the probe on a thread of its own; the answer comes back as a frame.
        if (this.groups.isGroup(request.pid)) {
          // one probe answers for its own process: which rank's sequence and weights to ask, and
          // how to number its answer in the job's view, is not decided yet
          this.send({
            type: 'refused', pid: request.pid, id: request.id, request: request.type, code: 'distributed_job',
            message: 'Explanations and the expert-weight analysis are not available for a distributed job yet (its ranks are shown as one). Run the model in a single process to use them.',
          });
          return;
        }
        const job = this.jobs.get(request.pid);
        if (!job) {
          this.send({ type: 'refused', pid: request.pid, id: request.id, request: request.type, code: 'bad_request', message: `Not attached to process ${request.pid}.` });
          return;
        }
        job.client.send(request.type === 'explain' ? explainFrame(request) : expertParamsFrame(request));
        return;
      }
      case 'configure':
        if (request.dbMaxMB !== undefined || request.dbMaxDays !== undefined) {
          this.opts.history?.setRetention(request.dbMaxMB !== undefined ? request.dbMaxMB * 1024 * 1024 : undefined, request.dbMaxDays);
        }
        if (request.historyMB !== undefined) this.history.setCap(request.historyMB * 1024 * 1024);
        if (request.updateHz !== undefined) this.pacer.setRate(request.updateHz);
        return;
    }
  }

  /** Past snapshots of a job, in parts that each fit in one native message. */
  private sendHistory(pid: number, from?: number, to?: number, layer?: number) {
    const entries = this.history.query(pid, 'counts', from, to);
    let part = 0;
    let batch: JobUpdate[] = [];
    let size = 0;
    const flush = (done: boolean) => {
      this.send({ type: 'history', pid, ...(layer !== undefined ? { layer } : {}), updates: batch, part: part++, done });
      batch = [];
      size = 0;
    };
    for (const entry of entries) {
      let update = jobUpdate(pid, entry.frame, 0);
      if (layer !== undefined) {
        if (layer >= update.layers) continue;
        update = oneLayer(update, layer);
      }
      const bytes = JSON.stringify(update).length;
      if (size + bytes > MESSAGE_BUDGET && batch.length) flush(false);
      batch.push(update);
      size += bytes;
    }
    flush(true);
  }

  /** Attach to a probe on TCP (through an SSH tunnel); the job is known by the pid its probe reports. */
  private async connectTcp(address: string, token: string): Promise<void> {
    const started = performance.now();
    const colon = address.lastIndexOf(':');
    const host = address.slice(0, colon).replace(/^\[|\]$/g, '');
    const port = Number(address.slice(colon + 1));
    let connected: Awaited<ReturnType<typeof ProbeClient.connect>>;
    try {
      connected = await ProbeClient.connect({ host, port, token }, 5000);
    } catch (err) {
      this.send({
        type: 'error', code: 'attach_timeout',
        message: `No probe answered at ${address} with that token: ${(err as Error).message}`,
        hint: 'Check the tunnel (ssh -L PORT:127.0.0.1:PORT host) and copy the token from probe-PID.tcp.json on the remote machine.',
      });
      return;
    }
    const { client, hello } = connected;
    if (this.jobs.has(hello.pid)) {
      client.close();
      this.send({ type: 'error', pid: hello.pid, code: 'already_attached', message: `Already attached to a process ${hello.pid}.` });
      return;
    }
    this.adopt(hello.pid, client, hello, 'tcp', started);
  }

  private async attach(pid: number): Promise<void> {
    if (this.jobs.has(pid) || this.attaching.has(pid)) {
      this.send({ type: 'error', pid, code: 'already_attached', message: `Already attached to process ${pid}.` });
      return;
    }
    this.attaching.add(pid);
    const started = performance.now();
    try {
      let method: AttachMethod = 'socket';
      let attempts: AttachAttempt[] | undefined;
      let path = probeSocketPath(pid, this.dir);
      if (!fs.existsSync(path)) {
        const facts = preflight(pid);
        const methods = this.opts.methods ?? attachMethods(facts);
        this.send({ type: 'attaching', pid, method: methods[0] });
        const attachTimeoutMs = this.opts.attachTimeoutMs ?? 15000;
        const injected = await injectProbe(facts, { probeRoot: this.opts.probeRoot, socketDir: this.dir, gdbPath: this.opts.gdbPath, attachTimeoutMs, methods });
        method = injected.method;
        attempts = injected.attempts;
        path = await waitForProbe(pid, this.dir, attachTimeoutMs);
      } else if (!processExists(pid)) {
        fs.rmSync(path, { force: true }); // a probe's socket left by a job that died
        throw new AttachError('no_such_process', `Process ${pid} does not exist (it may have exited).`);
      }
      const { client, hello } = await ProbeClient.connect(path).catch((err: Error) => {
        throw new AttachError('attach_timeout', `The probe in process ${pid} did not answer: ${err.message}.`,
          'Another MoE panel (another DevTools window) may be attached to this job; detach there first.');
      });
      if (hello.error) {
        await client.detach();
        const code = hello.error.code === 'no_moe' ? 'no_moe' : 'probe_failed';
        throw new AttachError(code, hello.error.message, code === 'no_moe' ? HINTS.no_moe : undefined);
      }
      this.adopt(pid, client, hello, method, started, attempts);
    } catch (err) {
      const e = err instanceof AttachError ? err : new AttachError('internal', (err as Error).message ?? String(err));
      this.send({ type: 'error', pid, code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}), ...(e.attempts ? { attempts: e.attempts } : {}) });
    } finally {
      this.attaching.delete(pid);
    }
  }

  private adopt(pid: number, client: ProbeClient, hello: ProbeHello, method: AttachMethod, started: number, attempts?: AttachAttempt[]) {
    const ms = Math.round(performance.now() - started);
    const common = { python: hello.python, framework: hello.framework, frameworkVersion: hello.framework_version, argv: hello.argv };
    const attached: Extract<HostMessage, { type: 'attached' }> = {
      type: 'attached', pid, method, ms, ...common, ...(hello.frameworks ? { frameworks: hello.frameworks } : {}),
      models: hello.models, warnings: hello.warnings ?? [], ...(attempts ? { attempts } : {}),
    };
    // Each process is its own history session and is watched for anomalies on its own (a rank of a
    // distributed job too: its session holds that rank's routing).
    const observer = new JobObserver(pid, hello.models, this.send, this.opts.history, attached, this.opts.detectAnomalies ?? true);
    const job: Job = { pid, client, method, models: hello.models, pending: new Map(), coalesced: 0, detaching: false, remote: method === 'tcp', observer };
    this.jobs.set(pid, job);
    client.onFrame((frame) => this.onFrame(job, frame));
    client.on('close', (err) => void this.onClose(job, err));
    // One rank of a distributed job: it joins its job (rank-groups.ts), which the panel sees as one.
    let rank: Extract<HostMessage, { type: 'attached' }>['rank'];
    let excluded: string | undefined;
    if (hello.dist) {
      const { key, label } = localJobKey(job.remote ? null : pid, hello.dist);
      const node = hello.dist.node;
      if (this.opts.groupRanks !== false) {
        const joined = this.groups.join({
          handle: pid, pid, node, via: '', rank: hello.dist.rank, worldSize: hello.dist.world_size, key, label,
          model: hello.models[0], method, ms, ...common,
        });
        if (joined.group >= 0) job.group = joined.group;
        excluded = joined.excluded;
      }
      rank = { group: job.group ?? -1, job: key, label, rank: hello.dist.rank, worldSize: hello.dist.world_size, node };
    }
    this.send({ ...attached, ...(rank ? { rank } : {}) });
    if (excluded) void this.detach(pid);
  }

  async detach(pid: number): Promise<void> {
    if (this.groups.isGroup(pid)) {
      // A distributed job: every rank, here and behind relays.
      this.groups.detaching(pid);
      await Promise.all(this.groups.liveMembers(pid).map((m) => (m.via ? this.relays.detach(m.handle) : this.detach(m.handle))));
      return;
    }
    const job = this.jobs.get(pid);
    if (!job) {
      this.send({ type: 'error', pid, code: 'bad_request', message: `Not attached to process ${pid}.` });
      return;
    }
    job.detaching = true;
    await job.client.detach();
  }

  async detachAll(): Promise<void> {
    this.relays.closeAll(); // each relay detaches from its node's ranks when its connection ends
    await Promise.all([...this.jobs.values()].map((job) => {
      job.detaching = true;
      return job.client.detach();
    }));
  }

  stop(): void {
    this.pacer.stop();
    clearInterval(this.watchdog);
    clearInterval(this.stats);
    this.relays.closeAll();
    for (const job of this.jobs.values()) job.client.close();
  }

  private onFrame(job: Job, frame: ProbeFrame) {
    if (frame.t === 'counts') {
      this.history.addCounts(job.pid, frame);
      job.observer.counts(frame);
      if (job.pending.has(frame.model)) job.coalesced += 1;
      job.pending.set(frame.model, frame);
      this.pacer.request();
    } else if (frame.t === 'tokens') {
      this.history.addTokens(job.pid, Date.now() / 1000, frame);
      job.observer.tokens(frame);
      if (this.congested()) {
        this.droppedToPanel += 1;
        return;
      }
      for (const part of splitTokenUpdate(tokenUpdate(job.pid, frame), MESSAGE_BUDGET)) {
        if (job.group !== undefined) this.groups.tokens(job.pid, part);
        else this.send(part);
      }
    } else if (frame.t === 'layers') {
      job.models = job.models.map((m) => (m.id === frame.model ? { ...m, layers: frame.layers } : m));
      job.observer.layers(frame.model, frame.layers);
      if (job.group !== undefined) this.groups.layers(job.pid, frame.model, frame.layers);
      else this.send({ type: 'layers', pid: job.pid, model: frame.model, layers: frame.layers });
    } else if (frame.t === 'losses') {
      // a few small rows per frame, a frame per counts flush at most; a distributed job's ranks
      // are merged by rank-groups.ts, which does not carry losses: they stay per process
      if (job.group === undefined) this.send(lossesUpdate(job.pid, frame));
    } else if (frame.t === 'explanation') {
      this.send(explanationMessage(job.pid, frame));
    } else if (frame.t === 'expert-params') {
      for (const part of expertParamsMessages(job.pid, frame, MESSAGE_BUDGET)) this.send(part);
    } else if (frame.t === 'refused') {
      this.send(refusedMessage(job.pid, frame));
    } else if (frame.t === 'error') {
      this.send({ type: 'error', pid: job.pid, code: 'probe_failed', message: `The probe stopped itself: ${frame.message}` });
    }
  }

  private async onClose(job: Job, err: Error | null) {
    if (this.jobs.get(job.pid) !== job) return;
    this.flushJob(job); // the final counts sent before goodbye
    this.jobs.delete(job.pid);
    job.observer.end();
    // A dying job closes its sockets a moment before it is gone from the process table.
    if (!job.detaching && !job.remote) await waitForExit(job.pid, 300);
    let detached: Extract<HostMessage, { type: 'detached' }>;
    if (job.detaching) {
      detached = { type: 'detached', pid: job.pid, reason: 'requested' };
    } else if (!job.remote && !processExists(job.pid)) {
      detached = { type: 'detached', pid: job.pid, reason: 'process_exited', message: `Process ${job.pid} exited.` };
    } else if (err) {
      detached = { type: 'detached', pid: job.pid, reason: 'error', message: `Connection to the probe failed: ${err.message}` };
    } else {
      detached = { type: 'detached', pid: job.pid, reason: 'probe_closed', message: 'The probe closed the connection.' };
    }
    this.send(detached);
    if (job.group !== undefined) {
      const status = detached.reason === 'requested' ? 'detached' : detached.reason === 'process_exited' ? 'exited' : 'lost';
      this.groups.end(job.pid, status, status === 'exited' ? 'exited' : status === 'detached' ? 'was detached' : `stopped streaming: ${detached.message}`);
    }
  }

  private checkJobsAlive() {
    for (const job of this.jobs.values()) {
      if (!job.remote && !processExists(job.pid)) job.client.close();
    }
  }

  /** Sends every job's newest counts; false when the browser is behind (they wait, coalesced, and are tried again). */
  private flushUpdates(): boolean {
    if (this.congested()) {
      this.droppedToPanel += 1;
      return false;
    }
    for (const job of this.jobs.values()) this.flushJob(job);
    this.groups.flush(); // each distributed job: the sum over its ranks, and each rank's figures
    return true;
  }

  private flushJob(job: Job) {
    for (const counts of job.pending.values()) {
      const update = jobUpdate(job.pid, counts, job.coalesced);
      if (job.group !== undefined) this.groups.counts(job.pid, update);
      else this.send(update);
    }
    job.pending.clear();
  }
}

async function waitForExit(pid: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (processExists(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

/** A probe counts frame as the panel's update message (binary payloads as plain numbers). */
export function jobUpdate(pid: number, counts: ProbeCounts, coalesced: number): JobUpdate {
  const update: JobUpdate = {
    type: 'update', pid, model: counts.model, passes: counts.passes,
    layers: counts.layers, widths: counts.widths, counts: countsToNumbers(counts.counts), tokens: countsToNumbers(counts.tokens),
    ts: counts.ts, dropped: counts.dropped + coalesced,
  };
  if (counts.health) update.health = float64s(counts.health);
  if (counts.max_logit) update.maxLogit = float64s(counts.max_logit);
  if (counts.time_s) update.timeS = counts.time_s;
  if (counts.expert_s) update.expertS = counts.expert_s;
  if (counts.probe_s !== undefined) update.probeS = counts.probe_s;
  if (counts.prefill !== undefined) update.prefill = counts.prefill;
  if (counts.decode !== undefined) update.decode = counts.decode;
  if (counts.shape) update.shape = counts.shape;
  if (counts.dropped_tokens !== undefined) update.droppedTokens = counts.dropped_tokens;
  if (counts.visibility) update.visibility = counts.visibility;
  if (counts.train !== undefined) update.train = counts.train;
  if (counts.backward !== undefined) update.backward = counts.backward;
  if (counts.backward_s) update.backwardS = counts.backward_s;
  return update;
}

/** A probe losses frame as the panel's message: rows of plain numbers, NaN (not computed) as null. */
export function lossesUpdate(pid: number, frame: ProbeLosses): LossesUpdate {
  const orNull = (x: number) => (Number.isNaN(x) ? null : x);
  const rows = frame.passes.length;
  const aux = float64s(frame.aux).map(orNull);
  const z = float64s(frame.z).map(orNull);
  const width = aux.length / rows;
  const row = (values: Array<number | null>, i: number) => values.slice(i * width, (i + 1) * width);
  return {
    type: 'losses', pid, model: frame.model, passes: frame.passes, ts: frame.ts,
    aux: frame.passes.map((_, i) => row(aux, i)), z: frame.passes.map((_, i) => row(z, i)),
    modelAux: float64s(frame.model_aux).map(orNull), loss: float64s(frame.loss).map(orNull),
  };
}

/** The update of one layer only, shaped as an update of a single-layer model (the history message says which layer). */
export function oneLayer(update: JobUpdate, layer: number): JobUpdate {
  const start = layerOffsets(update.widths)[layer]!;
  const width = update.widths[layer]!;
  const out: JobUpdate = {
    ...update, layers: 1, widths: [width], counts: update.counts.slice(start, start + width),
  };
  if (update.tokens) out.tokens = [update.tokens[layer]!];
  const hc = HEALTH_COLUMNS.length;
  if (update.health) out.health = update.health.slice(layer * hc, (layer + 1) * hc);
  if (update.maxLogit) out.maxLogit = [update.maxLogit[layer]!];
  if (update.timeS) out.timeS = [update.timeS[layer]!];
  if (update.backwardS) out.backwardS = [update.backwardS[layer]!];
  return out;
}

/** JSON bytes one token or history message may fill, leaving room under Chrome's 1 MiB limit. */
const MESSAGE_BUDGET = MAX_HOST_MESSAGE_BYTES - 64 * 1024;

/** Mixing weights to 4 decimals: plenty for display, and a third of the JSON size. */
const round4 = (x: number) => Math.round(x * 1e4) / 1e4;

/**
 * Split a token update by layers until each part fits in `maxBytes` of JSON; the panel
 * merges parts of the same pass. A single layer too large for one message is cut to fewer tokens.
 */
export function splitTokenUpdate(update: TokenUpdate, maxBytes: number): TokenUpdate[] {
  if (JSON.stringify(update).length <= maxBytes) return [update];
  if (update.layers.length > 1) {
    const half = Math.ceil(update.layers.length / 2);
    return [
      ...splitTokenUpdate({ ...update, layers: update.layers.slice(0, half) }, maxBytes),
      ...splitTokenUpdate({ ...update, layers: update.layers.slice(half) }, maxBytes),
    ];
  }
  const layer = update.layers[0];
  if (!layer || layer.n <= 1) return [];
  const n = Math.floor(layer.n / 2);
  const cut = { ...layer, n, ids: layer.ids.slice(0, n * layer.k), weights: layer.weights?.slice(0, n * layer.k) ?? null };
  return splitTokenUpdate({ ...update, tokenIds: update.tokenIds?.slice(0, n) ?? null, texts: update.texts?.slice(0, n) ?? null, layers: [cut] }, maxBytes);
}

export function tokenUpdate(pid: number, frame: ProbeTokens): TokenUpdate {
  return {
    type: 'tokens', pid, model: frame.model, pass: frame.pass, phase: frame.phase,
    tokenIds: frame.token_ids ? int32s(frame.token_ids) : null,
    texts: frame.texts,
    layers: frame.layers.map((l) => ({ layer: l.layer, n: l.n, k: l.k, ids: int32s(l.ids), weights: l.weights ? float32s(l.weights).map(round4) : null })),
  };
}
