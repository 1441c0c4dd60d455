/** One connection from the host to a probe's Unix socket. */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { Packr } from 'msgpackr';
import { ProtocolError, type ProbeFrame, type ProbeHello } from '../../src/protocol/probe';
import { ProbeFrameReader, encodeFrameHeader } from './probe-frames';

const packr = new Packr({ useRecords: false });
/**
 * How long a probe may take to say hello. Its survey is quick for torch, ONNX Runtime and Keras;
 * a Flax linen model's layers are only known once it has run a pass after attach (re-traced and
 * re-compiled), which the probe waits up to 20 s for (jax_backend.DISCOVERY_S).
 */
export const HELLO_TIMEOUT_MS = 30000;

export interface ProbeClientEvents {
  frame: [ProbeFrame];
  /** The connection ended; `error` says why when it was not a clean goodbye. */
  close: [error: Error | null];
}

export class ProbeClient extends EventEmitter<ProbeClientEvents> {
  private reader = new ProbeFrameReader();
  private closed = false;
  private closeError: Error | null = null;

  /** Frames that arrived while nobody listened (right after hello, before the host subscribes). */
  private backlog: ProbeFrame[] = [];

  private constructor(private readonly socket: net.Socket) {
    super();

    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', (err) => this.finish(err));
    socket.on('close', () => this.finish(null));
  }

  /**
   * Connect and wait for the probe's hello: to a Unix socket path, or to a TCP address
   * (a probe on another machine reached through an SSH tunnel), which needs its token.
   */
  static connect(target: string | { host: string; port: number; token: string }, timeoutMs = HELLO_TIMEOUT_MS): Promise<{ client: ProbeClient; hello: ProbeHello }> {
    return new Promise((resolve, reject) => {
      const socket = typeof target === 'string' ? net.createConnection({ path: target }) : net.createConnection({ host: target.host, port: target.port });
      const client = new ProbeClient(socket);
      if (typeof target !== 'string') client.send({ t: 'auth', token: target.token });
      const timer = setTimeout(() => {
        client.close();
        reject(new Error(`the probe did not say hello within ${timeoutMs} ms`));
      }, timeoutMs);
      const onFrame = (frame: ProbeFrame) => {
        if (frame.t !== 'hello') return;
        clearTimeout(timer);
        client.off('close', onClose);
        resolve({ client, hello: frame });
      };
      const onClose = (err: Error | null) => {
        clearTimeout(timer);
        client.off('frame', onFrame);
        reject(err ?? new Error('the probe closed the connection before saying hello'));
      };
      client.once('frame', onFrame);
      client.once('close', onClose);
    });
  }

  /** Receive every frame from now on, starting with those that arrived before anyone listened. */
  onFrame(handler: (frame: ProbeFrame) => void): void {
    this.on('frame', handler);
    const frames = this.backlog;
    this.backlog = [];
    for (const frame of frames) handler(frame);
  }

  send(message: Record<string, unknown>): void {
    if (this.closed) return;
    const body = packr.pack(message);
    this.socket.write(Buffer.concat([encodeFrameHeader(body.length), body]));
  }

  /** Ask the probe to remove its hooks and say goodbye; resolves when the connection is closed. */
  detach(timeoutMs = 3000): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.close();
      }, timeoutMs);
      this.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.send({ t: 'detach' });
    });
  }

  close(): void {
    this.socket.destroy();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private onData(chunk: Buffer) {
    let frames: ProbeFrame[];
    try {
      frames = this.reader.feed(chunk);
    } catch (err) {
      // A corrupt stream cannot be resynchronised: close this one connection only.
      this.closeError = err instanceof ProtocolError ? err : new ProtocolError(String(err));
      this.socket.destroy();
      return;
    }
    for (const frame of frames) {
      if (this.listenerCount('frame') > 0) this.emit('frame', frame);
      else this.backlog.push(frame);
      if (frame.t === 'bye') this.socket.end();
    }
  }

  private finish(err: Error | null) {
    if (this.closed) return;
    this.closed = true;
    this.emit('close', this.closeError ?? err);
  }
}
