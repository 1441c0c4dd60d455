/**
 * The panel's choice of transport (panels/host-link.ts), both branches: host messages over a
 * MessageChannel when the service worker takes one, over the runtime port as JSON when there is
 * no service worker to reach or it does not answer. chrome.runtime and navigator.serviceWorker are
 * stand-ins here (the seam this test isolates); the channel is Node's real MessageChannel, and the
 * real service worker in real DevTools is tested end to end by panel-attach.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { HostMessage } from '../../src/protocol/panel';
import { PANEL_PORT_NAME } from '../../src/protocol/panel';
import { channelIdOf } from '../../src/protocol/panel-channel';
import { PanelChannels } from '../../src/background/panel-channels';
import { connectHost } from '../../panels/host-link';

interface FakePort {
  name: string;
  sent: unknown[];
  deliver(m: HostMessage): void;
  disconnect(): void;
}

function fakeRuntime() {
  const ports: FakePort[] = [];
  const runtime = {
    id: 'ext',
    connect(_id: string, { name }: { name: string }) {
      const onMessage: Array<(m: HostMessage) => void> = [];
      const onDisconnect: Array<() => void> = [];
      const port: FakePort = { name, sent: [], deliver: (m) => onMessage.forEach((f) => f(m)), disconnect: () => onDisconnect.forEach((f) => f()) };
      ports.push(port);
      return {
        postMessage: (m: unknown) => port.sent.push(m),
        onMessage: { addListener: (f: (m: HostMessage) => void) => onMessage.push(f) },
        onDisconnect: { addListener: (f: () => void) => onDisconnect.push(f) },
      };
    },
  };
  return { runtime, ports };
}

function install(runtime: unknown, serviceWorker: unknown) {
  vi.stubGlobal('chrome', { runtime });
  vi.stubGlobal('navigator', { serviceWorker });
}

const hello: HostMessage = { type: 'hello', version: 1, host: 'h', platform: 'linux' };

afterEach(() => {
  vi.unstubAllGlobals();
  vi.useRealTimers();
});

describe('the panel link to its host', () => {
  it('takes host messages over the channel when the service worker takes it, and still sends requests up the port', async () => {
    const { runtime, ports } = fakeRuntime();
    const channels = new PanelChannels(); // the service worker's own bookkeeping
    const controller = { postMessage: (data: unknown, transfer: MessagePort[]) => channels.offer(data, transfer[0]) };
    install(runtime, { controller });
    const got: HostMessage[] = [];
    const link = await connectHost((m) => got.push(m), () => {});
    expect(link.transport).toBe('channel');
    const id = channelIdOf(ports[0]!.name);
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    const swEnd = channels.take(id!)!;
    swEnd.postMessage(hello);
    await vi.waitFor(() => expect(got).toEqual([hello]));
    link.send({ type: 'list' });
    expect(ports[0]!.sent).toEqual([{ type: 'list' }]);
    // a service worker that lost the channel (restarted) answers on the port: heard too
    ports[0]!.deliver({ type: 'processes', processes: [] });
    expect(got.at(-1)).toEqual({ type: 'processes', processes: [] });
    swEnd.close();
  });

  it('uses the port alone where there is no service worker to reach', async () => {
    const { runtime, ports } = fakeRuntime();
    install(runtime, undefined);
    const got: HostMessage[] = [];
    let disconnected = false;
    const link = await connectHost((m) => got.push(m), () => (disconnected = true));
    expect(link.transport).toBe('port');
    expect(ports[0]!.name).toBe(PANEL_PORT_NAME);
    ports[0]!.deliver(hello);
    expect(got).toEqual([hello]);
    ports[0]!.disconnect();
    expect(disconnected).toBe(true);
  });

  it('gives up on a service worker that does not answer within 5 s and uses the port', async () => {
    vi.useFakeTimers();
    const { runtime, ports } = fakeRuntime();
    const offered: unknown[] = [];
    install(runtime, { controller: { postMessage: (data: unknown) => offered.push(data) } });
    const pending = connectHost(() => {}, () => {});
    await vi.advanceTimersByTimeAsync(4900);
    expect(ports).toHaveLength(0); // still waiting for the answer
    await vi.advanceTimersByTimeAsync(200);
    const link = await pending;
    expect(offered).toHaveLength(1);
    expect(link.transport).toBe('port');
    expect(ports[0]!.name).toBe(PANEL_PORT_NAME);
  });
});
