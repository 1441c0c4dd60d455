/**
 * The relay link over real sockets: a relay (native-host/src/relay-server.ts) and the panel host's
 * side (relay-client.ts). The relay is told to serve a job that does not exist, so it attaches to
 * nothing on this machine; its ranks are the two-node end-to-end test's business.
 */
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { HostMessage } from '../../src/protocol/panel';
import { NativeMessageReader, encodeNativeMessage } from '../../native-host/src/native-messaging';
import { RankGroups } from '../../native-host/src/rank-groups';
import { RelayLinks } from '../../native-host/src/relay-client';
import { RelayServer } from '../../native-host/src/relay-server';

const TOKEN = 'ab'.repeat(16);
const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()!();
});

async function relay(): Promise<{ server: RelayServer; address: string; log: string[] }> {
  const log: string[] = [];
  const server = new RelayServer({ port: 0, token: TOKEN, node: 'node-x', probeRoot: '/nonexistent', job: 'no-such-job', log: (l) => log.push(l) });
  const port = await server.start();
  cleanup.push(() => server.stop());
  return { server, address: `127.0.0.1:${port}`, log };
}

function links() {
  const sent: HostMessage[] = [];
  let next = 1 << 30;
  const l = new RelayLinks((m) => sent.push(m), new RankGroups(() => {}, () => next++), () => next++);
  cleanup.push(() => l.closeAll());
  return { links: l, sent };
}

/** A raw client: sends `first`, collects what the relay says for `ms`. */
function rawClient(address: string, first: unknown, ms: number): Promise<{ messages: HostMessage[]; closed: boolean }> {
  return new Promise((resolve) => {
    const [host, port] = address.split(':');
    const socket = net.createConnection({ host, port: Number(port) });
    const reader = new NativeMessageReader();
    const messages: HostMessage[] = [];
    let closed = false;
    socket.on('connect', () => socket.write(encodeNativeMessage(first)));
    socket.on('data', (c) => messages.push(...(reader.feed(c) as HostMessage[])));
    socket.on('close', () => (closed = true));
    socket.on('error', () => (closed = true));
    setTimeout(() => {
      socket.destroy();
      resolve({ messages, closed });
    }, ms);
  });
}

describe('relay link', () => {
  it('refuses a wrong token, and says hello with its node name and a heartbeat to the right one', async () => {
    const { address, log } = await relay();
    const wrong = await rawClient(address, { type: 'auth', token: 'cd'.repeat(16) }, 300);
    expect(wrong.messages).toEqual([{ type: 'error', code: 'relay_failed', message: 'wrong token: copy the token this relay printed (or its --token-file)' }]);
    expect(wrong.closed).toBe(true);
    expect(log.some((l) => l.includes('wrong token'))).toBe(true);
    const notAuth = await rawClient(address, { type: 'hello', version: 1 }, 300);
    expect(notAuth.messages[0]).toMatchObject({ type: 'error', code: 'relay_failed' });

    const right = await rawClient(address, { type: 'auth', token: TOKEN }, 1600);
    expect(right.messages[0]).toMatchObject({ type: 'hello', host: 'moe-devtools-relay', node: 'node-x' });
    expect(right.messages.filter((m) => m.type === 'host-stats').length).toBeGreaterThanOrEqual(1);
  });

  it('serves one panel at a time; the panel host hears when it goes', async () => {
    const { server, address } = await relay();
    const { links: first, sent } = links();
    await first.connect(address, TOKEN);
    expect(sent).toEqual([{ type: 'relay', address, node: 'node-x', status: 'connected' }]);

    const { links: second, sent: sentSecond } = links();
    await second.connect(address, TOKEN);
    expect(sentSecond).toEqual([expect.objectContaining({
      type: 'error', code: 'relay_failed',
      message: `The relay at ${address} refused the connection: another panel is connected to this relay (node node-x); it serves one at a time`,
    })]);

    await server.stop();
    const deadline = Date.now() + 3000;
    while (!sent.some((m) => m.type === 'relay' && m.status === 'closed') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(sent.at(-1)).toMatchObject({ type: 'relay', address, node: 'node-x', status: 'closed', message: 'the connection closed' });
  });

  it('says where no relay answers', async () => {
    const free = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const port = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(port));
      });
    });
    const { links: l, sent } = links();
    await l.connect(`127.0.0.1:${free}`, TOKEN);
    expect(sent[0]).toMatchObject({ type: 'error', code: 'relay_failed', message: expect.stringMatching(new RegExp(`^No relay answered at 127.0.0.1:${free}: connect ECONNREFUSED`)) });
    expect((sent[0] as { hint: string }).hint).toContain('ssh -L');
  });
});
