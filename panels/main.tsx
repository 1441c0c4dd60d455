/** Panel bootstrap: theme, the link to the host through the service worker, the analysis worker, and the Preact app. */
import { render } from 'preact';
import * as Comlink from 'comlink';
import { PANEL_PROTOCOL_VERSION, type HostMessage } from '../src/protocol/panel';
import { Analyzer } from './engine/analyzer';
import { forWorker } from './engine/transfer';
import { connectHost } from './host-link';
import { Store, type AnalyzerPort, type UserSettings } from './store';
import { App } from './views/App';
import 'uplot/dist/uPlot.min.css';
import './panel.css';
import './long-run.css';

// Follow DevTools' theme, now and when the user switches it (Settings > Preferences > Theme).
const applyTheme = (name: string | undefined) => {
  document.documentElement.dataset.theme = name === 'dark' ? 'dark' : 'light';
};
applyTheme(globalThis.chrome?.devtools?.panels?.themeName);
globalThis.chrome?.devtools?.panels?.setThemeChangeHandler?.(applyTheme);

const SETTINGS_KEY = 'moe-devtools.settings';
function loadSettings(): Partial<UserSettings> {
  try {
    const value = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? '{}');
    return typeof value === 'object' && value ? value : {};
  } catch {
    return {};
  }
}

/** The analysis worker (dist/extension/worker.js); in-thread if workers are unavailable. */
function makeAnalyzer(): AnalyzerPort {
  try {
    const url = globalThis.chrome?.runtime?.id ? chrome.runtime.getURL('worker.js') : new URL('worker.js', location.href).href;
    const worker = new Worker(url);
    document.documentElement.dataset.analyzer = 'worker';
    const remote = Comlink.wrap<Analyzer>(worker) as unknown as AnalyzerPort;
    return {
      // Updates go over as transferred typed arrays (engine/transfer.ts); everything else as is.
      ingest: (message: HostMessage) => {
        const { message: m, transfer } = forWorker(message);
        return remote.ingest(transfer.length ? Comlink.transfer(m, transfer) : m);
      },
      ingestMany: (messages: HostMessage[]) => remote.ingestMany(messages),
      analyze: (pid, settings) => remote.analyze(pid, settings),
      clear: (pid) => remote.clear(pid),
      forget: (pid) => remote.forget(pid),
      // the Compare view and the placement plan (panels/engine/long-run.ts)
      compare: (a, b, settings) => remote.compare!(a, b, settings),
      plan: (pid, range, devices, redundant, layers, settings) => remote.plan!(pid, range, devices, redundant, layers, settings),
    };
  } catch {
    document.documentElement.dataset.analyzer = 'main-thread';
    return new Analyzer();
  }
}

const store = new Store(loadSettings());
store.useAnalyzer(makeAnalyzer());
store.onSettings((s) => {
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(s));
  } catch {
    // storage unavailable: settings last for this session
  }
});
// Shown at once ("connecting") while the link to the host is set up (host-link.ts).
render(<App store={store} />, document.getElementById('app')!);
void connectHost((message) => store.receive(message), () => store.setConnection('disconnected')).then((link) => {
  document.documentElement.dataset.transport = link.transport;
  store.connect(link.send);
  link.send({ type: 'hello', version: PANEL_PROTOCOL_VERSION });
  store.refresh();
  // New jobs start all the time; keep the list fresh while the panel is open.
  setInterval(() => store.refresh(), 2000);
});
// Analyses at up to 5 Hz (timers, not requestAnimationFrame: the panel document is often hidden).
setInterval(() => void store.tick(), 200);
