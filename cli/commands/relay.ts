/**
 * `moe-devtools relay`: serve this node's ranks of a distributed job to a panel on another machine
 * (native-host/src/relay-server.ts). It listens on 127.0.0.1 only; the panel's machine forwards the
 * port with `ssh -L` and connects with the token printed here (Relays in the panel's sidebar). It
 * attaches to the ranks only while a panel is connected, and detaches when it goes.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { hostSettingsFromEnv } from '../../native-host/src/env-settings';
import { RelayServer } from '../../native-host/src/relay-server';
import { CliError, fsError } from '../errors';

export interface RelayCommandOptions {
  port: number;
  /** Where to write {address, token, node} (mode 0600), for scripts and for copying over ssh. */
  tokenFile?: string;
  node?: string;
  job?: string;
  allNamespaces: boolean;
  probeRoot: string;
  log: (line: string) => void;
}

/** A token given in MOE_DEVTOOLS_RELAY_TOKEN (the same on every node is convenient), else a new random one. */
export function relayToken(env: NodeJS.ProcessEnv): string {
  const given = env.MOE_DEVTOOLS_RELAY_TOKEN;
  if (given === undefined) return randomBytes(16).toString('hex');
  if (!/^[0-9a-f]{16,128}$/.test(given)) throw new CliError('MOE_DEVTOOLS_RELAY_TOKEN should be 16 to 128 hex digits');
  return given;
}

/** Runs until SIGINT or SIGTERM; resolves once every rank has been detached. */
export async function relayCommand(opts: RelayCommandOptions): Promise<void> {
  const token = relayToken(process.env);
  const relay = new RelayServer({
    port: opts.port, token, node: opts.node, probeRoot: opts.probeRoot, job: opts.job, allNamespaces: opts.allNamespaces,
    log: (line) => opts.log(`moe-devtools relay: ${line}`),
    host: hostSettingsFromEnv(process.env, (line) => opts.log(`moe-devtools relay: note: ${line}`)),
  });
  let port: number;
  try {
    port = await relay.start();
  } catch (err) {
    throw new CliError(`cannot listen on 127.0.0.1:${opts.port}: ${(err as Error).message}`);
  }
  const address = `127.0.0.1:${port}`;
  if (opts.tokenFile) {
    try {
      fs.writeFileSync(opts.tokenFile, `${JSON.stringify({ address, token, node: relay.node })}\n`, { mode: 0o600 });
      fs.chmodSync(opts.tokenFile, 0o600);
    } catch (err) {
      await relay.stop();
      throw fsError('write', opts.tokenFile, err);
    }
  }
  opts.log(`moe-devtools relay: node ${relay.node}, listening on ${address} (loopback only: forward it with ssh -L ${port}:127.0.0.1:${port} THIS-NODE)`);
  opts.log(`moe-devtools relay: token ${token}${opts.tokenFile ? ` (also in ${opts.tokenFile})` : ''}`);
  opts.log('moe-devtools relay: attaches to the ranks of this node while a panel is connected; Ctrl-C to stop');
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  await relay.stop();
  if (opts.tokenFile) fs.rmSync(opts.tokenFile, { force: true });
}
