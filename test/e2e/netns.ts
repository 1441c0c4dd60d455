/**
 * Two "nodes" on this machine: two network namespaces joined by a veth pair, each with its own
 * loopback, as two machines on one network. Processes started in a namespace see only its network
 * (they share this machine's processes and files). Needs root (CAP_NET_ADMIN) and iproute2.
 *
 * The namespaces are removed by cleanup(), and by an exit hook should the test process end first.
 */
import { type ChildProcess, execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import * as net from 'node:net';

export interface Node {
  ns: string;
  iface: string;
  address: string;
}

export interface TwoNodes {
  a: Node;
  b: Node;
  /** Run a program inside a node (`ip netns exec`). */
  exec(node: Node, command: string, args: string[], opts?: SpawnOptions): ChildProcess;
  /**
   * What `ssh -L PORT:127.0.0.1:REMOTE node` gives: a port on this machine's loopback whose
   * connections reach 127.0.0.1:REMOTE inside the node (each through a small forwarder started
   * in the node, as sshd on the node would connect). Returns the local address.
   */
  tunnel(node: Node, remotePort: number): Promise<string>;
  cleanup(): void;
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** Copies stdin to a TCP connection to 127.0.0.1:PORT and back (the far end of a tunnel). */
const FORWARDER = `const s = require('net').connect(Number(process.argv[1]), '127.0.0.1');
process.stdin.pipe(s); s.pipe(process.stdout);
s.on('error', () => process.exit(1)); s.on('close', () => process.exit(0)); process.stdin.on('end', () => s.end());`;

export function twoNodes(): TwoNodes {
  if (process.getuid?.() !== 0) throw new Error('the two-node test needs root (network namespaces): run it as root');
  const tag = `${process.pid % 100000}`;
  const a: Node = { ns: `moe-node-a-${tag}`, iface: `moea${tag}`, address: '10.77.0.1' };
  const b: Node = { ns: `moe-node-b-${tag}`, iface: `moeb${tag}`, address: '10.77.0.2' };
  const children: ChildProcess[] = [];
  const servers: net.Server[] = [];
  let cleaned = false;
  const cleanup = () => {
    if (cleaned) return;
    cleaned = true;
    for (const s of servers) s.close();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const node of [a, b]) {
      try {
        ip('netns', 'del', node.ns); // takes its end of the veth pair, and so the pair, with it
      } catch {
        // never made, or already gone
      }
    }
  };
  process.once('exit', cleanup);
  try {
    ip('netns', 'add', a.ns);
    ip('netns', 'add', b.ns);
    ip('link', 'add', a.iface, 'type', 'veth', 'peer', 'name', b.iface);
    for (const node of [a, b]) {
      ip('link', 'set', node.iface, 'netns', node.ns);
      ip('-n', node.ns, 'addr', 'add', `${node.address}/24`, 'dev', node.iface);
      ip('-n', node.ns, 'link', 'set', node.iface, 'up');
      ip('-n', node.ns, 'link', 'set', 'lo', 'up');
    }
  } catch (err) {
    cleanup();
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`could not make two network namespaces (needs root and iproute2): ${stderr || (err as Error).message}`);
  }
  const exec = (node: Node, command: string, args: string[], opts: SpawnOptions = {}) => {
    const child = spawn('ip', ['netns', 'exec', node.ns, command, ...args], opts); // ip execs the command: same pid
    children.push(child);
    return child;
  };
  const tunnel = (node: Node, remotePort: number) => new Promise<string>((resolve, reject) => {
    const server = net.createServer((socket) => {
      const far = exec(node, process.execPath, ['-e', FORWARDER, String(remotePort)], { stdio: ['pipe', 'pipe', 'ignore'] });
      socket.pipe(far.stdin!);
      far.stdout!.pipe(socket);
      far.on('exit', () => socket.destroy());
      socket.on('close', () => far.kill('SIGKILL'));
      socket.on('error', () => far.kill('SIGKILL'));
    });
    servers.push(server);
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${(server.address() as net.AddressInfo).port}`));
  });
  return { a, b, exec, tunnel, cleanup };
}
