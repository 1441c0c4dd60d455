/**
 * The panel's link to its native host through the service worker: requests go up a runtime port;
 * host messages come down a MessageChannel as structured clones with typed arrays when the
 * service worker takes one (protocol/panel-channel.ts says why and how), else down the port as
 * JSON. The panel listens on both: the service worker sends a port's messages down exactly one of
 * them (the channel if it holds the one named in the port's name), so their order is kept.
 */
import { type HostMessage, type PanelRequest } from '../src/protocol/panel';
import { PANEL_CHANNEL_READY, PANEL_CHANNEL_REQUEST, panelPortName, type PanelChannelRequest } from '../src/protocol/panel-channel';

/**
 * How long the panel waits for the service worker to take its channel before it does without.
 * Generous: a service worker woken on a loaded machine can take seconds, and it answers at once
 * when it runs at all.
 */
const CHANNEL_WAIT_MS = 5000;

export type Transport = 'channel' | 'port';

export interface HostLink {
  send(request: PanelRequest): void;
  /** Which way host messages were asked to come. */
  transport: Transport;
}

export async function connectHost(onMessage: (m: HostMessage) => void, onDisconnect: () => void): Promise<HostLink> {
  const channel = await offerChannel(onMessage);
  const port = chrome.runtime.connect(chrome.runtime.id, { name: panelPortName(channel?.id) });
  port.onMessage.addListener((message: HostMessage) => onMessage(message));
  port.onDisconnect.addListener(() => {
    channel?.port.close();
    onDisconnect();
  });
  return { send: (request) => port.postMessage(request), transport: channel ? 'channel' : 'port' };
}

/** A MessageChannel the service worker has acknowledged, its port already delivering host messages; null where none could be set up. */
async function offerChannel(onMessage: (m: HostMessage) => void): Promise<{ id: string; port: MessagePort } | null> {
  const worker = navigator.serviceWorker?.controller ?? (await readyWorker());
  if (!worker) return null;
  const id = crypto.randomUUID();
  const { port1, port2 } = new MessageChannel();
  const taken = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), CHANNEL_WAIT_MS);
    port1.onmessage = (event) => {
      if (event.data?.type !== PANEL_CHANNEL_READY || event.data.id !== id) return;
      clearTimeout(timer);
      port1.onmessage = (e: MessageEvent<HostMessage>) => onMessage(e.data);
      resolve(true);
    };
  });
  try {
    worker.postMessage({ type: PANEL_CHANNEL_REQUEST, id } satisfies PanelChannelRequest, [port2]);
  } catch {
    return null;
  }
  if (await taken) return { id, port: port1 };
  port1.close();
  return null;
}

/** The extension's active service worker when this page is not controlled by it, within CHANNEL_WAIT_MS; null if none. */
async function readyWorker(): Promise<ServiceWorker | null> {
  if (!navigator.serviceWorker) return null;
  const timeout = new Promise<null>((resolve) => setTimeout(() => resolve(null), CHANNEL_WAIT_MS));
  const registration = await Promise.race([navigator.serviceWorker.ready.catch(() => null), timeout]);
  return registration?.active ?? null;
}
