/**
 * The native messaging host: Chrome starts it (one process per connectNative
 * port) with stdio as the message channel. Nothing but frames may go to stdout,
 * so every log line goes to stderr.
 */
import * as path from 'node:path';
import { parsePanelRequest, type HostMessage } from '../../src/protocol/panel';
import { Host } from './host';
import { historySettingsFromEnv, hostSettingsFromEnv } from './env-settings';
import { HistoryService } from './history-service';
import { NativeMessageReader, encodeNativeMessage } from './native-messaging';

const log = (line: string) => process.stderr.write(`[moe-devtools-host] ${line}\n`);

function send(message: HostMessage) {
  try {
    process.stdout.write(encodeNativeMessage(message));
  } catch (err) {
    log(`dropped a message to the browser: ${(err as Error).message}`);
    if ('pid' in message && message.pid !== undefined) {
      process.stdout.write(encodeNativeMessage({ type: 'error', pid: message.pid, code: 'internal', message: `An update was too large to send: ${(err as Error).message}` }));
    }
  }
}

const probeRoot = process.env.MOE_DEVTOOLS_PROBE_ROOT ?? path.dirname(process.argv[1] ?? __filename);
// More than this much unread by the browser means it is behind: coalesce and drop instead of queueing.
const CONGESTED_BYTES = 8 * 1024 * 1024;
// The persistent history, on its own thread (history-worker.cjs beside this file).
const historySettings = historySettingsFromEnv(process.env, log);
const history = historySettings.file
  ? new HistoryService({ file: historySettings.file, maxBytes: historySettings.maxBytes, maxDays: historySettings.maxDays, tokenPassesPerS: historySettings.tokenPassesPerS, snapshotsPerS: historySettings.snapshotsPerS, log })
  : undefined;
const host = new Host(send, {
  probeRoot,
  congested: () => process.stdout.writableLength > CONGESTED_BYTES,
  ...hostSettingsFromEnv(process.env, log),
  history,
  historyOff: { path: historySettings.wouldBe, reason: 'History is off (MOE_DEVTOOLS_DB=off).' },
});
const reader = new NativeMessageReader();

process.stdin.on('data', (chunk: Buffer) => {
  let messages: unknown[];
  try {
    messages = reader.feed(chunk);
  } catch (err) {
    log(`unreadable input from the browser: ${(err as Error).message}`);
    void shutdown(1);
    return;
  }
  for (const message of messages) {
    if (message instanceof Error) {
      send({ type: 'error', code: 'bad_request', message: message.message });
      continue;
    }
    const request = parsePanelRequest(message);
    if ('error' in request) {
      send({ type: 'error', code: 'bad_request', message: request.error });
      continue;
    }
    host.handle(request).catch((err) => send({ type: 'error', code: 'internal', message: String(err) }));
  }
});

let stopping = false;
async function shutdown(code: number) {
  if (stopping) return;
  stopping = true;
  // The browser closed the port: take every probe's hooks out, then leave. The jobs carry on.
  await Promise.race([host.detachAll(), new Promise((r) => setTimeout(r, 3000))]);
  await history?.close(); // commits the last snapshots
  host.stop();
  process.exit(code);
}

process.stdin.on('end', () => void shutdown(0));
// The browser is gone (EPIPE on our output): leave the same orderly way, so the history is committed.
process.stdout.on('error', () => void shutdown(0));
process.stdin.on('error', () => void shutdown(0));
process.on('SIGTERM', () => void shutdown(0));
process.on('SIGINT', () => void shutdown(0));
