/** Drives the built native host over real stdio native messaging, as Chrome does. */
import { type ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import type { HostMessage, PanelRequest } from '../../src/protocol/panel';
import { ROOT } from './jobs';

export class HostDriver {
  readonly process: ChildProcess;
  readonly messages: HostMessage[] = [];
  private buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  stderr = '';

  constructor(env: NodeJS.ProcessEnv = {}) {
    this.process = spawn(path.join(ROOT, 'dist/host/moe-devtools-host'), ['chrome-extension://test/'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    this.process.stdout!.on('data', (chunk: Buffer) => this.onData(chunk));
    this.process.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk));
  }

  send(request: PanelRequest | Record<string, unknown>) {
    const body = Buffer.from(JSON.stringify(request));
    const head = Buffer.alloc(4);
    head.writeUInt32LE(body.length);
    this.process.stdin!.write(Buffer.concat([head, body]));
  }

  sendRaw(bytes: Buffer) {
    this.process.stdin!.write(bytes);
  }

  /** Wait for the first message (after `from`) that satisfies `match`. */
  async waitFor<T extends HostMessage>(match: (m: HostMessage) => m is T, timeoutMs?: number, from?: number): Promise<T>;
  async waitFor(match: (m: HostMessage) => boolean, timeoutMs?: number, from?: number): Promise<HostMessage>;
  async waitFor(match: (m: HostMessage) => boolean, timeoutMs = 20000, from = 0): Promise<HostMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.slice(from).find(match);
      if (found) return found;
      if (Date.now() > deadline) {
        throw new Error(`timed out; host said: ${this.messages.slice(-5).map((m) => JSON.stringify(m).slice(0, 200)).join(' | ')} stderr: ${this.stderr}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  exited(): Promise<number | null> {
    if (this.process.exitCode !== null) return Promise.resolve(this.process.exitCode);
    return new Promise((resolve) => this.process.once('exit', (code) => resolve(code)));
  }

  kill(signal: NodeJS.Signals = 'SIGKILL') {
    this.process.kill(signal);
  }

  private onData(chunk: Buffer) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length >= 4) {
      const length = this.buffer.readUInt32LE(0);
      if (this.buffer.length < 4 + length) break;
      this.messages.push(JSON.parse(this.buffer.subarray(4, 4 + length).toString('utf8')));
      this.buffer = this.buffer.subarray(4 + length);
    }
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

export const isType =
  <K extends HostMessage['type']>(type: K, pid?: number) =>
  (m: HostMessage): m is Extract<HostMessage, { type: K }> =>
    m.type === type && (pid === undefined || !('pid' in m) || m.pid === pid);
