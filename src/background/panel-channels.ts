/**
 * The MessageChannels panels bring to the service worker (protocol/panel-channel.ts), held from
 * the panel's request until its runtime port connects. A panel that never connects (closed in
 * between) leaves its channel behind: dropped after UNCLAIMED_MS.
 */
import { isChannelRequest, PANEL_CHANNEL_READY } from '../protocol/panel-channel';

const UNCLAIMED_MS = 60_000;

export class PanelChannels {
  private readonly waiting = new Map<string, { port: MessagePort; timer: ReturnType<typeof setTimeout> }>();

  /** A message posted to the service worker: a panel's channel is kept and acknowledged on it; anything else is ignored. */
  offer(data: unknown, port: MessagePort | undefined): void {
    if (!isChannelRequest(data) || !port) return;
    this.drop(data.id);
    const timer = setTimeout(() => this.drop(data.id), UNCLAIMED_MS);
    this.waiting.set(data.id, { port, timer });
    port.postMessage({ type: PANEL_CHANNEL_READY, id: data.id });
  }

  /** The channel a panel port named with this id brought, once; undefined for none. */
  take(id: string): MessagePort | undefined {
    const entry = id ? this.waiting.get(id) : undefined;
    if (!entry) return undefined;
    clearTimeout(entry.timer);
    this.waiting.delete(id);
    return entry.port;
  }

  private drop(id: string) {
    const entry = this.waiting.get(id);
    if (!entry) return;
    clearTimeout(entry.timer);
    entry.port.close();
    this.waiting.delete(id);
  }
}
