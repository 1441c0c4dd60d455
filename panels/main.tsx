/** Panel bootstrap: theme, the port to the service worker, and the Preact app. */
import { render } from 'preact';
import { PANEL_PORT_NAME, PANEL_PROTOCOL_VERSION, type HostMessage } from '../src/protocol/panel';
import { Store } from './store';
import { App } from './views/App';
import 'uplot/dist/uPlot.min.css';
import './panel.css';

const theme = globalThis.chrome?.devtools?.panels?.themeName === 'dark' ? 'dark' : 'light';
document.documentElement.dataset.theme = theme;

const store = new Store();
const port = chrome.runtime.connect(chrome.runtime.id, { name: PANEL_PORT_NAME });
port.onMessage.addListener((message: HostMessage) => store.receive(message));
port.onDisconnect.addListener(() => store.setConnection('disconnected'));
store.connect((request) => port.postMessage(request));
port.postMessage({ type: 'hello', version: PANEL_PROTOCOL_VERSION });
store.refresh();
// New jobs start all the time; keep the list fresh while the panel is open.
setInterval(() => store.refresh(), 2000);

render(<App store={store} />, document.getElementById('app')!);
