/**
 * The service worker only pairs ports: each panel port gets its own native
 * host process, and messages pass through unchanged in both directions
 * (as React DevTools' background does). It keeps no state of its own, so an
 * MV3 worker restart loses nothing; an open native port keeps it alive.
 */
import { HOST_NAME, PANEL_PORT_NAME, type HostMessage } from '../protocol/panel';

chrome.runtime.onConnect.addListener((panel) => {
  if (panel.name !== PANEL_PORT_NAME) return;
  let native: chrome.runtime.Port | null = chrome.runtime.connectNative(HOST_NAME);

  native.onMessage.addListener((message) => panel.postMessage(message));
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
      panel.postMessage(message);
    } catch {
      // the panel is gone too
    }
  });

  panel.onMessage.addListener((message) => native?.postMessage(message));
  panel.onDisconnect.addListener(() => {
    native?.disconnect(); // the host sees EOF, detaches every probe and exits
    native = null;
  });
});
