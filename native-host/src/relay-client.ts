/**
 * The panel's host, connected to relays on other nodes (relay-protocol.ts). Each relay streams the
 * ranks it attached to on its node; their messages come in under the relay's process ids, are
 * given handles of this host (HANDLE_BASE and up: pids of two machines can be equal), and join
 * their distributed job in RankGroups beside the ranks of every other node. When a relay closes,
 * or says nothing for LOST_AFTER_MS, its ranks are named as lost and the others go on.
 */
import * as net from 'node:net';
import { PANEL_PROTOCOL_VERSION, type HostMessage } from '../../src/protocol/panel';
import { NativeMessageReader, encodeNativeMessage } from './native-messaging';
import type { RankGroups } from './rank-groups';
import { LOST_AFTER_MS } from './relay-protocol';

interface Link {
  address: string;
  socket: net.Socket;
  node: string;
  /** Relay pid -> our handle, and back. */
  handles: Map<number, number>;
  pids: Map<number, number>;
  lastHeard: number;
  timer: NodeJS.Timeout;
  closed: boolean;
}

export class RelayLinks {
  private links = new Map<string, Link>();
  private byHandle = new Map<number, Link>();

  constructor(
    private readonly send: (message: HostMessage) => void,
    private readonly groups: RankGroups,
    private readonly newHandle: () => number,
  ) {}

  owns(handle: number): boolean {
    return this.byHandle.has(handle);
  }

  connect(address: string, token: string, timeoutMs = 5000): Promise<void> {
    if (this.links.has(address)) {
      this.send({ type: 'error', code: 'already_attached', message: `Already connected to the relay at ${address}.` });
      return Promise.resolve();
    }
    const colon = address.lastIndexOf(':');
    const host = address.slice(0, colon).replace(/^\[|\]$/g, '');
    const port = Number(address.slice(colon + 1));
    return new Promise((resolve) => {
      const socket = net.createConnection({ host, port });
      const reader = new NativeMessageReader();
      let link: Link | null = null;
      let said = false;
      const fail = (message: string, hint?: string) => {
        if (said) return;
        said = true;
        this.send({ type: 'error', code: 'relay_failed', message, ...(hint ? { hint } : {}) });
        socket.destroy();
        resolve();
      };
      const timer = setTimeout(() => fail(`The relay at ${address} did not answer within ${timeoutMs} ms.`, TUNNEL_HINT), timeoutMs);
      socket.once('connect', () => socket.write(encodeNativeMessage({ type: 'auth', token })));
      socket.on('data', (chunk: Buffer) => {
        let messages: unknown[];
        try {
          messages = reader.feed(chunk);
        } catch (err) {
          return link ? this.close(link, `it sent something unreadable (${(err as Error).message})`) : fail(`The relay at ${address} sent something unreadable.`);
        }
        for (const m of messages) {
          if (m instanceof Error || typeof m !== 'object' || m === null) continue;
          const message = m as HostMessage;
          if (!link) {
            if (message.type === 'error') return fail(`The relay at ${address} refused the connection: ${message.message}`, message.hint);
            if (message.type !== 'hello') continue;
            clearTimeout(timer);
            said = true;
            link = this.open(address, socket, message.node ?? address);
            resolve();
            continue;
          }
          link.lastHeard = Date.now();
          this.onMessage(link, message);
        }
      });
      socket.on('error', (err) => (link ? this.close(link, err.message) : fail(`No relay answered at ${address}: ${err.message}.`, TUNNEL_HINT)));
      socket.on('close', () => (link ? this.close(link, 'the connection closed') : fail(`The relay at ${address} closed the connection before saying hello.`, TUNNEL_HINT)));
    });
  }

  private open(address: string, socket: net.Socket, node: string): Link {
    const link: Link = {
      address, socket, node, handles: new Map(), pids: new Map(), lastHeard: Date.now(), closed: false,
      timer: setInterval(() => {
        if (Date.now() - link.lastHeard > LOST_AFTER_MS) this.close(link, `no word from it for ${LOST_AFTER_MS / 1000} s`);
      }, 500),
    };
    this.links.set(address, link);
    socket.write(encodeNativeMessage({ type: 'hello', version: PANEL_PROTOCOL_VERSION }));
    this.send({ type: 'relay', address, node, status: 'connected' });
    return link;
  }

  private onMessage(link: Link, m: HostMessage) {
    const handle = 'pid' in m && m.pid !== undefined ? link.handles.get(m.pid) : undefined;
    switch (m.type) {
      case 'attached': {
        if (!m.rank) return; // a relay serves ranks of distributed jobs only
        const mine = this.newHandle();
        link.handles.set(m.pid, mine);
        link.pids.set(mine, m.pid);
        this.byHandle.set(mine, link);
        const joined = this.groups.join({
          handle: mine, pid: m.pid, node: link.node, via: link.address, rank: m.rank.rank, worldSize: m.rank.worldSize,
          key: m.rank.job, label: m.rank.label, model: m.models[0], method: 'relay', ms: m.ms, python: m.python,
          framework: m.framework, frameworkVersion: m.frameworkVersion, argv: m.argv,
        });
        if (joined.excluded) this.detach(mine);
        return;
      }
      case 'update':
        if (handle !== undefined) this.groups.counts(handle, { ...m, pid: handle });
        return;
      case 'tokens':
        if (handle !== undefined) this.groups.tokens(handle, { ...m, pid: handle });
        return;
      case 'layers':
        if (handle !== undefined) this.groups.layers(handle, m.model, m.layers);
        return;
      case 'detached':
        if (handle !== undefined) {
          const status = m.reason === 'requested' ? 'detached' : m.reason === 'process_exited' ? 'exited' : 'lost';
          this.groups.end(handle, status, status === 'exited' ? 'exited' : status === 'detached' ? 'was detached' : `stopped streaming: ${m.message ?? m.reason}`);
          this.forget(link, handle);
        }
        return;
      case 'error':
        // What went wrong on the relay's node (an attach that failed there), said as such.
        this.send({ ...m, pid: undefined, message: `Relay ${link.node} (${link.address}): ${m.message}` });
        return;
      default:
        return; // hello, host-stats (its heartbeat), processes
    }
  }

  private forget(link: Link, handle: number) {
    const pid = link.pids.get(handle);
    link.pids.delete(handle);
    if (pid !== undefined) link.handles.delete(pid);
    this.byHandle.delete(handle);
  }

  /** Ask a rank's relay to detach it. */
  detach(handle: number) {
    const link = this.byHandle.get(handle);
    const pid = link?.pids.get(handle);
    if (!link || pid === undefined || link.closed) return;
    link.socket.write(encodeNativeMessage({ type: 'detach', pid }));
  }

  private close(link: Link, why: string) {
    if (link.closed) return;
    link.closed = true;
    clearInterval(link.timer);
    link.socket.destroy();
    this.links.delete(link.address);
    const handles = [...link.pids.keys()];
    this.groups.endAll(handles, 'lost', `stopped streaming: lost the relay at ${link.address} (node ${link.node}): ${why}`);
    for (const handle of handles) this.forget(link, handle);
    this.send({ type: 'relay', address: link.address, node: link.node, status: 'closed', message: why });
  }

  /** Close every relay link (the panel went away): each relay then detaches from its ranks. */
  closeAll() {
    for (const link of [...this.links.values()]) this.close(link, 'this host is closing');
  }
}

const TUNNEL_HINT = 'Start `npx moe-devtools relay` on the node, forward its port (ssh -L PORT:127.0.0.1:PORT node) and copy the token it printed.';
