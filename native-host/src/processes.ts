/**
 * Finding the user's Python processes that have torch loaded (Linux: /proc;
 * macOS: `ps` and `lsof` output, see macos.ts; both judged by the same helpers).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ProcessInfo } from '../../src/protocol/panel';
import { distributedJobs, readDistFacts } from './dist-discovery';
import { type CommandRunner, listMacProcessFacts, readMacProcessFacts } from './macos';
import { probeSocketPath } from './paths';

/** Which platform's discovery to use, and (macOS) how to run ps and lsof; for tests. */
export interface PlatformOptions {
  platform?: NodeJS.Platform;
  run?: CommandRunner;
}

export interface ProcessFacts {
  pid: number;
  uid: number;
  cmdline: string[];
  exe: string;
  /** Paths of the shared objects mapped into the process. */
  images: string[];
}

/** "3.11" from a libpython soname or an interpreter file name; null when neither says. */
export function pythonVersionFrom(exe: string, images: string[]): string | null {
  for (const image of images) {
    const m = /libpython(\d+\.\d+)t?\.(so|dylib)/.exec(path.basename(image));
    if (m) return m[1];
    const framework = /\/Python\.framework\/Versions\/(\d+\.\d+)\/Python$/.exec(image);
    if (framework) return framework[1];
  }
  const m = /^python(\d+\.\d+)t?$/.exec(path.basename(exe));
  return m ? m[1] : null;
}

export function isPython(exe: string, images: string[]): boolean {
  return pythonVersionFrom(exe, images) !== null || /^python\d*(\.\d+)?t?$/.test(path.basename(exe));
}

export function hasTorch(images: string[]): boolean {
  return images.some((image) => /\/libtorch(_cpu|_cuda|_python)?\.(so|dylib)/.test(image));
}

/** Unique mapped file paths from the text of /proc/PID/maps. */
export function imagesFromMaps(maps: string): string[] {
  const seen = new Set<string>();
  for (const line of maps.split('\n')) {
    const slash = line.indexOf('/');
    if (slash > 0) seen.add(line.slice(slash).replace(/ \(deleted\)$/, ''));
  }
  return [...seen];
}

export function readProcessFacts(pid: number, proc = '/proc', opts: PlatformOptions = {}): ProcessFacts | null {
  if ((opts.platform ?? process.platform) === 'darwin') return readMacProcessFacts(pid, opts.run);
  const dir = path.join(proc, String(pid));
  try {
    const uid = fs.statSync(dir).uid;
    const cmdline = fs.readFileSync(path.join(dir, 'cmdline'), 'utf8').split('\0').filter(Boolean);
    let exe = '';
    try {
      exe = fs.readlinkSync(path.join(dir, 'exe'));
    } catch {
      exe = cmdline[0] ?? '';
    }
    let images: string[] = [];
    try {
      images = imagesFromMaps(fs.readFileSync(path.join(dir, 'maps'), 'utf8'));
    } catch {
      // another user's process, or a zombie: no maps to read
    }
    return { pid, uid, cmdline, exe, images };
  } catch {
    return null;
  }
}

/** Whether pid names a live process (a zombie, exited but not yet reaped, does not count). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // Field 3 of /proc/PID/stat is the state; the command name before it may hold spaces.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return process.platform !== 'linux'; // no /proc (macOS): kill(pid, 0) is all we know
  }
}

export function describeProcess(facts: ProcessFacts, attached: boolean): ProcessInfo {
  const cmdline = facts.cmdline.join(' ');
  return {
    pid: facts.pid,
    cmdline: cmdline.length > 300 ? `${cmdline.slice(0, 297)}...` : cmdline,
    python: pythonVersionFrom(facts.exe, facts.images),
    torch: hasTorch(facts.images),
    probe: fs.existsSync(probeSocketPath(facts.pid)),
    attached,
  };
}

/** Remove probe sockets whose process is gone (a job killed with SIGKILL cannot clean up). */
export function removeStaleSockets(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^probe-(\d+)\.(sock|status\.json)$/.exec(name);
    if (m && !processExists(Number(m[1]))) fs.rmSync(path.join(dir, name), { force: true });
  }
}

function* procFacts(proc: string): Generator<ProcessFacts> {
  for (const name of fs.readdirSync(proc)) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const facts = readProcessFacts(pid, proc, { platform: 'linux' });
    if (facts) yield facts;
  }
}

/** The current user's Python processes with torch loaded, or with a probe listening. */
export function listTorchProcesses(attachedPids: Set<number>, proc = '/proc', opts: PlatformOptions = {}): ProcessInfo[] {
  const uid = process.getuid?.() ?? 0;
  removeStaleSockets(path.dirname(probeSocketPath(0)));
  const all = (opts.platform ?? process.platform) === 'darwin' ? listMacProcessFacts(uid, opts.run) : procFacts(proc);
  const out: ProcessInfo[] = [];
  for (const facts of all) {
    if (facts.pid === process.pid || facts.uid !== uid || !isPython(facts.exe, facts.images)) continue;
    const info = describeProcess(facts, attachedPids.has(facts.pid));
    if (info.torch || info.probe) out.push(info);
  }
  if ((opts.platform ?? process.platform) === 'linux') {
    // Ranks of one distributed job, from their environment and parent (dist-discovery.ts).
    const jobs = distributedJobs(out.map((p) => readDistFacts(p.pid, p.cmdline.split(' '), proc)));
    for (const p of out) {
      const dist = jobs.get(p.pid);
      if (dist) p.dist = dist;
    }
  }
  return out.sort((a, b) => a.pid - b.pid);
}
