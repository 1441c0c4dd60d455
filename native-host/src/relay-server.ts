/**
 * The relay: a headless host on one node of a multi-node job (`npx moe-devtools relay`). While a
 * panel's host is connected and authenticated (relay-protocol.ts), it attaches to the ranks of
 * distributed jobs on its node and streams each rank as the native host would (per-rank updates:
 * the panel's host merges the nodes). When that connection ends, it detaches from every rank: the
 * job runs on as before. One client at a time; it listens on loopback only, to be reached through
 * an SSH tunnel.
 *
 * Its node: the processes in the relay's own network namespace (what the rest of the cluster sees
 * as this machine), unless told to take every namespace (ranks in containers with their own
 * network, a relay on the container host).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import { PANEL_PROTOCOL_VERSION, parsePanelRequest, type HostMessage, type ProcessInfo } from '../../src/protocol/panel';
import { Host, type HostOptions } from './host';
import { NativeMessageReader, encodeNativeMessage } from './native-messaging';
import { listTorchProcesses } from './processes';
import { AUTH_TIMEOUT_MS, HEARTBEAT_MS, isAuth, tokenMatches } from './relay-protocol';

export interface RelayOptions {
  /** TCP port on 127.0.0.1 (0: any free port). */
  port: number;
  token: string;
  /** How the panel names this node (default: the host name). */
  node?: string;
  probeRoot: string;
  /** Only ranks of this job (ProcessDist.job); default every distributed job on the node. */
  job?: string;
  /** Take ranks in every network namespace, not only the relay's own. */
  allNamespaces?: boolean;
  log: (line: string) => void;
  host?: Partial<HostOptions>;
  /** How often to look for ranks that started since (ms). */
  scanMs?: number;
}

/** Attach errors worth another try at the next scan: the rank is still starting up. */
const STILL_STARTING = new Set(['no_torch', 'no_moe', 'attach_timeout']);
/** A connected panel's host reading this slowly: coalesce rather than queue without bound. */
const CONGESTED_BYTES = 8 * 1024 * 1024;

export function networkNamespace(pid: number | 'self'): string | null {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return null;
  }
}

export class RelayServer {
  private server: net.Server | null = null;
  private session: Session | null = null;
  readonly node: string;

  constructor(private readonly opts: RelayOptions) {
    this.node = opts.node ?? os.hostname();
  }

  /** Listen; resolves with the port. */
  start(): Promise<number> {
    return new Promise((resolve, reject) => {
      const server = net.createServer((socket) => this.accept(socket));
      server.once('error', reject);
      server.listen(this.opts.port, '127.0.0.1', () => {
        this.server = server;
        resolve((server.address() as net.AddressInfo).port);
      });
    });
  }

  async stop(): Promise<void> {
    this.server?.close();
    await this.session?.end();
  }

  private accept(socket: net.Socket) {
    socket.setNoDelay(true);
    const reader = new NativeMessageReader();
    const refuse = (message: string) => socket.end(encodeNativeMessage({ type: 'error', code: 'relay_failed', message }));
    const timer = setTimeout(() => refuse('no token within 5 s'), AUTH_TIMEOUT_MS);
    const onData = (chunk: Buffer) => {
      let messages: unknown[];
      try {
        messages = reader.feed(chunk);
      } catch {
        messages = [null];
      }
      if (!messages.length) return; // wait for the whole message
      const [first, ...rest] = messages;
      clearTimeout(timer);
      socket.off('data', onData);
      if (!isAuth(first) || !tokenMatches(first.token, this.opts.token)) {
        this.opts.log(`refused a connection from ${socket.remoteAddress}:${socket.remotePort}: wrong token`);
        return refuse('wrong token: copy the token this relay printed (or its --token-file)');
      }
      if (this.session) return refuse(`another panel is connected to this relay (node ${this.node}); it serves one at a time`);
      this.session = new Session(socket, reader, this.opts, this.node, () => {
        this.session = null;
      });
      this.session.take(rest);
    };
    socket.on('data', onData);
    socket.on('error', () => clearTimeout(timer));
  }
}

/** One authenticated panel host: a Host whose messages go to it, attached to the node's ranks. */
class Session {
  private host: Host;
  private heartbeat: NodeJS.Timeout;
  private scanner: NodeJS.Timeout;
  /** Pids attached or being attached, and pids to leave alone (failed for good). */
  private tried = new Map<number, 'pending' | 'attached' | 'failed'>();
  private ended: Promise<void> | null = null;
  private readonly ns = networkNamespace('self');

  constructor(
    private readonly socket: net.Socket,
    private readonly reader: NativeMessageReader,
    private readonly opts: RelayOptions,
    node: string,
    private readonly onEnd: () => void,
  ) {
    this.host = new Host((m) => this.onHostMessage(m), {
      ...opts.host, probeRoot: opts.probeRoot, groupRanks: false, congested: () => socket.writableLength > CONGESTED_BYTES,
    });
    opts.log(`a panel connected from ${socket.remoteAddress}:${socket.remotePort}`);
    this.send({ type: 'hello', version: PANEL_PROTOCOL_VERSION, host: 'moe-devtools-relay', platform: process.platform, node });
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('close', () => void this.end());
    socket.on('error', () => void this.end());
    this.heartbeat = setInterval(() => this.send({
      type: 'host-stats', rssBytes: process.memoryUsage.rss(), historyBytes: this.host.history.used, historyCapBytes: this.host.history.capBytes,
      historyEvicted: this.host.history.evicted, droppedToPanel: this.host.droppedToPanel,
    }), HEARTBEAT_MS);
    this.scanner = setInterval(() => this.scan(), opts.scanMs ?? 2000);
    this.scan();
  }

  private send(m: HostMessage) {
    if (this.socket.destroyed) return;
    try {
      this.socket.write(encodeNativeMessage(m));
    } catch (err) {
      this.opts.log(`dropped a message: ${(err as Error).message}`);
    }
  }

  private onHostMessage(m: HostMessage) {
    if (m.type === 'attached' && this.tried.has(m.pid)) this.tried.set(m.pid, 'attached');
    if (m.type === 'error' && m.pid !== undefined && this.tried.get(m.pid) === 'pending') {
      this.tried.set(m.pid, 'failed');
      if (STILL_STARTING.has(m.code)) this.tried.delete(m.pid); // try again at the next scan
      else this.opts.log(`cannot attach to ${m.pid}: ${m.message}`);
    }
    if (m.type === 'detached') this.tried.delete(m.pid);
    this.send(m);
  }

  /** The node's ranks not attached yet: attach to each (in parallel). */
  private scan() {
    let processes: ProcessInfo[];
    try {
      processes = listTorchProcesses(new Set());
    } catch (err) {
      this.opts.log(`cannot list processes: ${(err as Error).message}`);
      return;
    }
    for (const p of processes) {
      if (!p.dist || this.tried.has(p.pid)) continue;
      if (this.opts.job && p.dist.job !== this.opts.job) continue;
      if (!this.opts.allNamespaces && this.ns && networkNamespace(p.pid) !== this.ns) continue;
      this.tried.set(p.pid, 'pending');
      this.opts.log(`attaching to ${p.pid} (${p.dist.label}${p.dist.rank !== null ? `, rank ${p.dist.rank}` : ''})`);
      void this.host.handle({ type: 'attach', pid: p.pid });
    }
  }

  private onData(chunk: Buffer) {
    let messages: unknown[];
    try {
      messages = this.reader.feed(chunk);
    } catch {
      this.socket.destroy();
      return;
    }
    this.take(messages);
  }

  /** Requests from the panel's host: detach a rank, configure; nothing else is for a relay. */
  take(messages: unknown[]) {
    for (const message of messages) {
      const request = parsePanelRequest(message);
      if ('error' in request) {
        this.send({ type: 'error', code: 'bad_request', message: request.error });
      } else if (request.type === 'detach' || request.type === 'configure') {
        void this.host.handle(request);
      } else if (request.type !== 'hello') {
        this.send({ type: 'error', code: 'bad_request', message: `a relay does not take ${request.type} requests` });
      }
    }
  }

  /** The panel's host went away: take the probes out of every rank, then wait for the next. */
  end(): Promise<void> {
    this.ended ??= (async () => {
      clearInterval(this.heartbeat);
      clearInterval(this.scanner);
      this.socket.destroy();
      await Promise.race([this.host.detachAll(), new Promise((r) => setTimeout(r, 3000))]);
      this.host.stop();
      this.opts.log('the panel disconnected; detached from every rank');
      this.onEnd();
    })();
    return this.ended;
  }
}
