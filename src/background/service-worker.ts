/**
 * The service worker only pairs ports: each panel port gets its own native
 * host process, and messages pass through with the same content in both
 * directions (as React DevTools' background does). It keeps no state of its own beyond
 * the pairs, so an MV3 worker restart loses nothing; an open native port keeps
 * it alive. Host messages reach a panel over its MessageChannel when it brought
 * one (protocol/panel-channel.ts), with long number lists as typed arrays.
 */
import { HOST_NAME, type HostMessage } from '../protocol/panel';
import { channelIdOf } from '../protocol/panel-channel';
import { withTypedLists } from '../protocol/typed-lists';
import { PanelChannels } from './panel-channels';

const channels = new PanelChannels();
self.addEventListener('message', (event) => channels.offer((event as MessageEvent).data, (event as MessageEvent).ports[0]));

chrome.runtime.onConnect.addListener((panel) => {
  const channelId = channelIdOf(panel.name);
  if (channelId === null) return;
  const channel = channels.take(channelId);
  const toPanel = channel
    ? (message: HostMessage) => {
        const { message: m, transfer } = withTypedLists(message);
        channel.postMessage(m, transfer);
      }
    : (message: HostMessage) => panel.postMessage(message);
  let native: chrome.runtime.Port | null = chrome.runtime.connectNative(HOST_NAME);

  native.onMessage.addListener((message: HostMessage) => toPanel(message));
  native.onDisconnect.addListener(() => {
    const reason = chrome.runtime.lastError?.message ?? 'The native host exited.';
    native = null;
    const message: HostMessage = {
      type: 'error',
      code: 'host_unavailable',
      message: `Lost the MoE DevTools native host: ${reason}`,
      hint: /not found|forbidden/i.test(reason)
        ? 'Register it with `npm run install-host` in the moe-devtools folder, then reopen DevTools.'
        : 'Reopen DevTools to start it again; its log is on stderr of the browser process.',
    };
    try {
      toPanel(message);
    } catch {
      // the panel is gone too
    }
  });

  panel.onMessage.addListener((message) => native?.postMessage(message));
  panel.onDisconnect.addListener(() => {
    native?.disconnect(); // the host sees EOF, detaches every probe and exits
    native = null;
    channel?.close();
  });
});
