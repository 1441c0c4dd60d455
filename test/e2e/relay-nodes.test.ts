/**
 * A multi-node job: two nodes simulated on this machine with network namespaces (netns.ts), a real
 * torchrun job across them (2 nodes x 2 ranks, gloo over the veth link, expert parallel with
 * all_to_all), and `moe-devtools relay` on each node, reached through a tunnel to its loopback port
 * as through `ssh -L`. The panel connects to both relays with their tokens and shows one job of 4
 * ranks whose counts are the sum of the four ranks' own logs. A wrong token is refused with a clear
 * message; a node that stops answering is named and the other node's ranks keep streaming.
 */
import { type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Frame } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clickInPanel, launchBrowser, makeProfile, openMoEPanel, setPanelSettings, showView } from '../../scripts/lib/devtools-harness.mjs';
import { ROOT, pythonPath } from './jobs';
import { twoNodes, type Node, type TwoNodes } from './netns';
import { EP_JOB, readRankLog, type RankLog } from './ranks';
import { checkLayer, readRanks } from './ranks-panel';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a job on two nodes, through a relay on each', () => {
  let nodes: TwoNodes;
  let browser: Browser;
  let profile: string;
  let dir: string;
  const launchers: ChildProcess[] = [];
  const relays: ChildProcess[] = [];
  const logs = (): RankLog[] => [0, 1, 2, 3].map((r) => readRankLog(path.join(dir, `rank${r}.jsonl`))).filter((l): l is RankLog => l !== null);

  /** torchrun on one node: 2 ranks of the 4, gloo over the node's veth, the rendezvous on node a. */
  function startNode(node: Node, nodeRank: number) {
    const torchrun = path.join(path.dirname(pythonPath()), 'torchrun');
    const child = nodes.exec(node, 'env', [
      `GLOO_SOCKET_IFNAME=${node.iface}`, 'OMP_NUM_THREADS=1', torchrun, '--nnodes', '2', '--node-rank', String(nodeRank), '--nproc-per-node', '2',
      '--master-addr', nodes.a.address, '--master-port', '29611', EP_JOB, '--log-dir', dir, '--mode', 'ep', '--sleep', '0.05',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    launchers.push(child);
  }

  /** `moe-devtools relay` on a node; resolves with its port and token (from its --token-file). */
  async function startRelay(node: Node, name: string): Promise<{ port: number; token: string; child: ChildProcess }> {
    const tokenFile = path.join(dir, `relay-${name}.json`);
    const child = nodes.exec(node, process.execPath, [path.join(ROOT, 'bin/moe-devtools.mjs'), 'relay', '--port', '0', '--token-file', tokenFile, '--node', name],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MOE_DEVTOOLS_PROBE_ROOT: path.join(ROOT, 'dist/host') } });
    relays.push(child);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const deadline = Date.now() + 60000;
    while (!fs.existsSync(tokenFile)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the relay on ${name} did not start: ${stderr}`);
      await sleep(100);
    }
    const info = JSON.parse(fs.readFileSync(tokenFile, 'utf8'));
    return { port: Number(info.address.split(':')[1]), token: info.token, child };
  }

  async function connectRelay(panel: Frame, address: string, token: string) {
    await panel.waitForSelector('[data-testid="relay-connect"]:not([disabled])', { timeout: 30000 });
    await panel.$eval('[data-testid="relay-address"]', (el: Element, v: string) => ((el as HTMLInputElement).value = v), address);
    await panel.$eval('[data-testid="relay-token"]', (el: Element, v: string) => ((el as HTMLInputElement).value = v), token);
    await clickInPanel(panel, '[data-testid="relay-connect"]');
  }

  beforeAll(async () => {
    nodes = twoNodes();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-nodes-'));
    startNode(nodes.a, 0);
    startNode(nodes.b, 1);
    profile = makeProfile();
    browser = await launchBrowser({ userDataDir: profile });
    const deadline = Date.now() + 120000;
    while (!(logs().length === 4 && logs().every((l) => l.passes.length >= 8))) {
      if (launchers.some((c) => c.exitCode !== null)) throw new Error('torchrun exited early on a node');
      if (Date.now() > deadline) throw new Error('the two-node job did not start within 120 s');
      await sleep(200);
    }
  });

  afterAll(async () => {
    await browser?.close();
    for (const l of logs()) {
      try {
        process.kill(l.ready.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    for (const c of [...relays, ...launchers]) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    nodes?.cleanup();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
  });

  it('shows one job of 4 ranks from the relays of both nodes, refuses a wrong token, and names a node that stops answering', async () => {
    const relayA = await startRelay(nodes.a, 'node-a');
    const relayB = await startRelay(nodes.b, 'node-b');
    const tunnelA = await nodes.tunnel(nodes.a, relayA.port);
    const tunnelB = await nodes.tunnel(nodes.b, relayB.port);

    const { devtools, panel } = await openMoEPanel(browser);
    await setPanelSettings(panel, { windowMode: 'all' });
    await connectRelay(panel, tunnelA, 'f'.repeat(32));
    const refused = await panel.waitForFunction(() => document.querySelector('[data-testid="notice"][data-code="relay_failed"]')?.textContent, { polling: 100, timeout: 30000 })
      .catch(async (err: Error) => {
        // say what the panel showed instead (other notices, the relay's row), not only that it timed out
        const shown = await panel.$$eval('[data-testid="notice"], [data-testid="relay"]', (els: Element[]) => els.map((el) => `${el.getAttribute('data-code') ?? el.getAttribute('data-status')}: ${el.textContent}`));
        throw new Error(`${err.message}; the panel showed: ${JSON.stringify(shown)}`);
      });
    expect(await refused.jsonValue()).toMatch(new RegExp(`The relay at ${tunnelA} refused the connection: wrong token`));

    await connectRelay(panel, tunnelA, relayA.token);
    await connectRelay(panel, tunnelB, relayB.token);
    await panel.waitForSelector('[data-testid="tab-ranks"]', { timeout: 60000 });
    await showView(panel, 'ranks');
    await panel.waitForFunction(() => document.querySelectorAll('[data-testid="rank-row"][data-status="attached"]').length === 4, { polling: 100, timeout: 60000 });
    const relaysShown = await panel.$$eval('[data-testid="relay"]', (els: Element[]) => els.map((el) => [el.getAttribute('data-address'), el.getAttribute('data-status')]));
    expect(relaysShown).toEqual(expect.arrayContaining([[tunnelA, 'connected'], [tunnelB, 'connected']]));
    const nodeOf = await panel.$$eval('[data-testid="rank-row"]', (rows: Element[]) => rows.map((r) => [r.getAttribute('data-rank'), r.children[1]!.textContent]));
    expect(nodeOf).toEqual([['0', 'node-a'], ['1', 'node-a'], ['2', 'node-b'], ['3', 'node-b']]);
    expect(await panel.$eval('[data-testid="attach-status"]', (el: Element) => el.textContent)).toMatch(/^4 of 4 ranks streaming · torch\.distributed at 10\.77\.0\.1:29611, world 4$/);

    // one job: the sum of four ranks on two nodes, each rank as its own log says
    const shown = await checkLayer(panel, logs, 0, 4);
    expect(shown.ranks.map((r) => r.held)).toEqual([[0, 1], [2, 3], [4, 5], [6, 7]]);
    await showView(panel, 'ranks');
    await devtools.screenshot({ path: path.join(ROOT, 'test-artifacts/relay-two-nodes.png') });

    // node b stops answering (its relay frozen: no goodbye, no closed connection): named once its
    // heartbeats stop; node a's ranks keep streaming
    relayB.child.kill('SIGSTOP');
    const stopped = Date.now();
    const lost = await panel.waitForFunction(() => [...document.querySelectorAll('[data-testid="notice"][data-code="rank_lost"]')].map((n) => n.textContent).join('\n') || null,
      { polling: 100, timeout: 20000 });
    const text = await lost.jsonValue();
    console.log(`node b frozen; named after ${Date.now() - stopped} ms: ${text}`);
    expect(text).toMatch(/Ranks 2 and 3 \(pids \d+, \d+ on node-b\) stopped streaming: lost the relay at .* \(node node-b\): no word from it for 5 s; ranks 0 and 1 go on\./);
    await panel.waitForFunction(() => document.querySelectorAll('[data-testid="rank-row"][data-status="lost"]').length === 2, { polling: 100, timeout: 10000 });
    const before = await readRanks(panel);
    await sleep(2500);
    const after = await readRanks(panel);
    for (const rank of [0, 1]) {
      expect(after.ranks.find((r) => r.rank === rank)!.status).toBe('attached');
      expect(after.ranks.find((r) => r.rank === rank)!.passes).toBeGreaterThan(before.ranks.find((r) => r.rank === rank)!.passes + 5);
    }
    relayB.child.kill('SIGCONT');
  });
});
