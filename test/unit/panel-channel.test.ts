/**
 * Host messages over the panel's MessageChannel (protocol/panel-channel.ts): long number lists
 * as typed arrays that say exactly what the host sent, the handshake's names, and the service
 * worker's channels held until their panel connects. Node's own MessageChannel is the real one
 * (structured clone, transfer); the end-to-end test in real DevTools is panel-attach.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MessageChannel as NodeMessageChannel } from 'node:worker_threads';
import type { HostMessage, JobUpdate, TokenUpdate } from '../../src/protocol/panel';
import { PANEL_PORT_NAME } from '../../src/protocol/panel';
import { channelIdOf, isChannelRequest, panelPortName, PANEL_CHANNEL_READY, PANEL_CHANNEL_REQUEST } from '../../src/protocol/panel-channel';
import { COMPACT, typedListsAsArrays, withTypedLists } from '../../src/protocol/typed-lists';
import { PanelChannels } from '../../src/background/panel-channels';
import { forWorker } from '../../panels/engine/transfer';
import { parseRecording, serializeRecording } from '../../panels/engine/recording';

const update = (): JobUpdate => ({
  type: 'update', pid: 7, model: 0, passes: 12, layers: 2, widths: [3, 2], counts: [1, 2.5, 1e15 + 1, 0, 7], tokens: [9, 11],
  ts: 1700000000.123456, dropped: 0, health: [0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6], maxLogit: [3.25, -1e-7], timeS: [0.001, 0.002],
});
const tokens = (): TokenUpdate => ({
  type: 'tokens', pid: 7, model: 0, pass: 12, phase: 'decode', tokenIds: [5, 6], texts: ['a', 'b'],
  layers: [{ layer: 0, n: 2, k: 2, ids: [0, 2, 1, -1], weights: [0.6000000238, 0.4, 1 / 3, 0] }, { layer: 1, n: 2, k: 1, ids: [1, 0], weights: null }],
});

/** A message across a real MessagePort (structured clone, with the transfer list), as the panel receives it. */
async function across(message: HostMessage, transfer: ArrayBuffer[]): Promise<HostMessage> {
  const { port1, port2 } = new NodeMessageChannel();
  const got = new Promise<HostMessage>((resolve) => port2.once('message', resolve));
  port1.postMessage(message, transfer);
  const m = await got;
  port1.close();
  return m;
}

describe('typed number lists', () => {
  it('carry an update exactly: every list a Float64Array equal to what the host sent, the message given left as it was', async () => {
    const original = update();
    const sent = JSON.parse(JSON.stringify(original)) as JobUpdate;
    const { message, transfer } = withTypedLists(original);
    expect(original).toEqual(sent); // untouched
    expect(transfer).toHaveLength(5); // counts, tokens, health, maxLogit, timeS
    const got = (await across(message, transfer)) as JobUpdate;
    for (const key of ['counts', 'tokens', 'health', 'maxLogit', 'timeS'] as const) {
      expect(got[key]).toBeInstanceOf(Float64Array);
      expect(Array.from(got[key] as unknown as Float64Array)).toEqual(sent[key]);
    }
    expect(got.widths).toEqual([3, 2]); // short lists stay lists
    // written back out, it is the message the host sent
    expect(JSON.parse(JSON.stringify(got, typedListsAsArrays))).toEqual(sent);
  });

  it('leave a list holding null (a non-finite number in JSON) as the host sent it', async () => {
    const sent = { ...update(), maxLogit: [null, 3.25] } as unknown as JobUpdate;
    const { message, transfer } = withTypedLists(sent);
    expect(transfer).toHaveLength(4); // counts, tokens, health, timeS
    const got = (await across(message, transfer)) as JobUpdate;
    expect(got.maxLogit).toEqual([null, 3.25]);
    expect(got.counts).toBeInstanceOf(Float64Array);
    expect(JSON.parse(JSON.stringify(got, typedListsAsArrays))).toEqual(sent);
  });

  it('leave a token record holding null (a NaN mixing weight) as the host sent it', async () => {
    const sent = tokens();
    (sent.layers[1] as { weights: Array<number | null> }).weights = [null, 1];
    const { message, transfer } = withTypedLists(sent);
    expect(transfer).toEqual([]);
    const got = (await across(message, transfer)) as TokenUpdate;
    expect(got).toEqual(sent);
    expect(JSON.parse(JSON.stringify(got, typedListsAsArrays))).toEqual(sent);
  });

  it('copy lists that are typed already, so the sender keeps its own', () => {
    const typed = { ...update(), counts: new Float64Array([4, 5, 6, 7, 8]) } as unknown as JobUpdate;
    const { message, transfer } = withTypedLists(typed);
    expect((message as JobUpdate).counts).not.toBe(typed.counts);
    expect(transfer).toContain(((message as JobUpdate).counts as unknown as Float64Array).buffer);
    expect(Array.from((message as JobUpdate).counts)).toEqual([4, 5, 6, 7, 8]);
  });

  it('pack a token record in one buffer: lossless for the panel, Int32 ids and Float32 weights for the analysis worker', async () => {
    const sent = tokens();
    const lossless = withTypedLists(sent);
    expect(lossless.transfer).toHaveLength(1);
    const got = (await across(lossless.message, lossless.transfer)) as TokenUpdate;
    expect(got.layers[0]!.ids).toBeInstanceOf(Float64Array);
    expect(JSON.parse(JSON.stringify(got, typedListsAsArrays))).toEqual(sent);

    // the panel's copy for the worker, from what came over the channel
    const { message, transfer } = forWorker(got);
    expect(transfer).toHaveLength(1);
    const layers = (message as TokenUpdate).layers as unknown as Array<{ ids: Int32Array; weights: Float32Array | null }>;
    expect(layers[0]!.ids).toBeInstanceOf(Int32Array);
    expect(Array.from(layers[0]!.ids)).toEqual([0, 2, 1, -1]);
    expect(Array.from(layers[0]!.weights!)).toEqual(Array.from(Float32Array.from(sent.layers[0]!.weights!)));
    expect(layers[1]!.weights).toBeNull();
    expect(Array.from((got as TokenUpdate).layers[0]!.ids)).toEqual([0, 2, 1, -1]); // the panel's own is left as it is
    expect(withTypedLists(sent, COMPACT).transfer[0]!.byteLength).toBe(4 * (4 + 4 + 2));
  });

  it('leave other messages as they are', () => {
    const m: HostMessage = { type: 'processes', processes: [] };
    expect(withTypedLists(m)).toEqual({ message: m, transfer: [] });
  });

  it('make a recording that reads back as the messages the host sent', () => {
    const sent: HostMessage[] = [update(), tokens()];
    const received = sent.map((m) => withTypedLists(m).message);
    const back = parseRecording(serializeRecording(7, 1700000000000, received));
    expect(back.messages).toEqual(JSON.parse(JSON.stringify(sent)));
  });
});

describe('the channel handshake', () => {
  it('names a panel port with its channel id, and tells panel ports from others', () => {
    expect(panelPortName()).toBe(PANEL_PORT_NAME);
    expect(channelIdOf(panelPortName())).toBe('');
    expect(channelIdOf(panelPortName('abc-1'))).toBe('abc-1');
    expect(channelIdOf(`${PANEL_PORT_NAME}/`)).toBeNull();
    expect(channelIdOf('something-else')).toBeNull();
    expect(channelIdOf(`${PANEL_PORT_NAME}x/abc`)).toBeNull();
    expect(isChannelRequest({ type: PANEL_CHANNEL_REQUEST, id: 'a' })).toBe(true);
    expect(isChannelRequest({ type: PANEL_CHANNEL_REQUEST, id: '' })).toBe(false);
    expect(isChannelRequest({ type: 'other', id: 'a' })).toBe(false);
    expect(isChannelRequest(null)).toBe(false);
  });

  describe('service worker channels', () => {
    afterEach(() => vi.useRealTimers());

    it('acknowledge a channel on itself, hand it to the panel port named with its id once, and ignore anything else', async () => {
      const channels = new PanelChannels();
      const { port1, port2 } = new NodeMessageChannel();
      const ack = new Promise((resolve) => port1.once('message', resolve));
      channels.offer({ type: PANEL_CHANNEL_REQUEST, id: 'p1' }, port2 as unknown as MessagePort);
      expect(await ack).toEqual({ type: PANEL_CHANNEL_READY, id: 'p1' });
      channels.offer({ type: 'hello' }, port2 as unknown as MessagePort); // not a request: ignored
      channels.offer({ type: PANEL_CHANNEL_REQUEST, id: 'p2' }, undefined); // no port: ignored
      expect(channels.take('')).toBeUndefined();
      expect(channels.take('p2')).toBeUndefined();
      expect(channels.take('p1')).toBe(port2);
      expect(channels.take('p1')).toBeUndefined();
      port1.close();
    });

    it('drop a channel no panel port claims within a minute', () => {
      vi.useFakeTimers();
      const channels = new PanelChannels();
      const closed: string[] = [];
      const port = { postMessage: () => {}, close: () => closed.push('p') } as unknown as MessagePort;
      channels.offer({ type: PANEL_CHANNEL_REQUEST, id: 'late' }, port);
      vi.advanceTimersByTime(59_000);
      expect(closed).toEqual([]);
      vi.advanceTimersByTime(2_000);
      expect(closed).toEqual(['p']);
      expect(channels.take('late')).toBeUndefined();
    });
  });
});
