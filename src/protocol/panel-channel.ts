/**
 * How the panel gets the host's messages as structured clones instead of JSON.
 *
 * chrome.runtime ports carry JSON: every message the host sends is parsed again on the panel's
 * main thread, and an update of 64 x 512 counts took ~1 ms to parse there (4 times that at
 * 128 x 1024), 30 times a second, inside the frames the panel is drawing. A MessageChannel
 * between the service worker and the panel carries structured clones, and the service worker
 * puts updates' counts and token records in typed arrays (typed-lists.ts), which arrive as one
 * memcpy each.
 *
 * The handshake: the panel posts PANEL_CHANNEL_REQUEST with a fresh id and one end of a
 * MessageChannel to the extension's service worker (navigator.serviceWorker), waits for
 * PANEL_CHANNEL_READY on that end, then opens its runtime port named panelPortName(id). The
 * service worker sends that port's host messages down the channel; requests still go up the
 * runtime port, and its disconnect still means the host is gone. Where there is no service worker
 * to reach or no answer comes, the panel opens a port without an id and gets JSON as before.
 */
import { PANEL_PORT_NAME } from './panel';

export const PANEL_CHANNEL_REQUEST = 'moe-panel-channel';
export const PANEL_CHANNEL_READY = 'moe-panel-channel-ready';

export interface PanelChannelRequest {
  type: typeof PANEL_CHANNEL_REQUEST;
  id: string;
}

/** The runtime port's name: the panel's, with the id of its channel if it has one. */
export function panelPortName(channelId?: string): string {
  return channelId ? `${PANEL_PORT_NAME}/${channelId}` : PANEL_PORT_NAME;
}

/** For a runtime port's name: null if it is not a panel's; else the id of its channel, or '' for none. */
export function channelIdOf(portName: string): string | null {
  if (portName === PANEL_PORT_NAME) return '';
  return portName.startsWith(`${PANEL_PORT_NAME}/`) && portName.length > PANEL_PORT_NAME.length + 1 ? portName.slice(PANEL_PORT_NAME.length + 1) : null;
}

export function isChannelRequest(data: unknown): data is PanelChannelRequest {
  const d = data as Partial<PanelChannelRequest> | null;
  return typeof d === 'object' && d !== null && d.type === PANEL_CHANNEL_REQUEST && typeof d.id === 'string' && d.id.length > 0;
}
