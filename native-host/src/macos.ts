/**
 * macOS process discovery: there is no /proc, so the same facts the Linux code reads
 * from /proc/PID are taken from `ps` and `lsof` output instead.
 *
 * Commands, and why these:
 *
 * - `ps -axww -o pid=,uid=,args=`: every process with its effective uid and its command line.
 *   `args` is the last column, so it may hold spaces and is still split unambiguously.
 *   `comm` is not used: on macOS it is argv[0] (not the executable), it may itself hold spaces,
 *   and it pads to a width when it is not last, so `pid,uid,comm,args` cannot be split reliably.
 *   `-ww` because a `ps` that thinks it writes to a terminal cuts lines at the terminal width.
 *   `-ax` and filtering the uid here, rather than `-U uid`, keeps one code path for root and
 *   for a plain user, and lets the tests show another user's processes being left out.
 * - `ps -axww -o pid=,ucomm=`: the kernel's name for the process (from the executable file,
 *   e.g. `python3.11` or `Python`). It survives setproctitle (vLLM and Ray rename their Python
 *   workers in `args`), so a renamed Python is still looked at.
 * - `lsof -n -P -w -a -d txt -F fn -p PID,PID,...`: the files mapped into each process.
 *   On macOS lsof reports every mapped file (the executable, each dylib and extension module
 *   outside the dyld shared cache, dyld itself) as a `txt` entry, read with
 *   proc_pidinfo(PROC_PIDREGIONPATHINFO), which needs nothing more than owning the process.
 *   `vmmap` was the alternative: it needs task_for_pid (root, or refused for hardened
 *   processes), is slower, and its output is larger and less stable. lsof ships with macOS
 *   (/usr/sbin/lsof). One lsof call covers all candidates; `f` is asked for explicitly because
 *   lsof 4.94+ no longer prints it unasked (Apple's 4.91 always does).
 *
 * Only processes whose `args` or `ucomm` mention python are given to lsof; whether a process
 * really is Python, and has torch loaded, is then decided from its images by the same
 * helpers as on Linux (processes.ts).
 */
import { spawnSync } from 'node:child_process';
import type { ProcessFacts } from './processes';

export interface CommandResult {
  /** The program is not installed (ENOENT). */
  missing: boolean;
  /** Exit status, null when it was killed or never ran. */
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion; the seam the tests replace with captured output. */
export type CommandRunner = (file: string, args: string[]) => CommandResult;

export const PS = '/bin/ps';
export const LSOF = '/usr/sbin/lsof';

export const runCommand: CommandRunner = (file, args) => {
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 15000, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'pipe'] });
  return {
    missing: (r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT',
    status: r.status,
    stdout: r.stdout ?? '',
    stderr: r.stderr ?? '',
  };
};

export function psListArgs(): string[] {
  return ['-axww', '-o', 'pid=,uid=,args='];
}

export function psNamesArgs(): string[] {
  return ['-axww', '-o', 'pid=,ucomm='];
}

export function lsofArgs(pids: number[]): string[] {
  return ['-n', '-P', '-w', '-a', '-d', 'txt', '-F', 'fn', '-p', pids.join(',')];
}

export interface PsEntry {
  pid: number;
  uid: number;
  /** The command line as ps shows it: arguments joined with spaces. */
  args: string;
}

/** Lines of `ps -o pid=,uid=,args=`; lines that do not fit are skipped. */
export function parsePsList(text: string): PsEntry[] {
  const out: PsEntry[] = [];
  for (const line of text.split('\n')) {
    // pid and uid are right-aligned numbers; exactly one space separates uid from args.
    const m = /^\s*(\d+)\s+(\d+)(?: (.*))?$/.exec(line.replace(/\r$/, ''));
    if (m) out.push({ pid: Number(m[1]), uid: Number(m[2]), args: m[3] ?? '' });
  }
  return out;
}

/** pid -> ucomm from `ps -o pid=,ucomm=` (ucomm is padded with spaces to its column width). */
export function parsePsNames(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*(\d+) (.*)$/.exec(line.replace(/\r$/, ''));
    if (m && m[2].trim()) out.set(Number(m[1]), m[2].trim());
  }
  return out;
}

/**
 * pid -> mapped file paths, in lsof's order (ascending address, so the executable first),
 * from `lsof -F fn` output. Entries other than txt, and lsof's error notes in the name
 * field ("region info error: ..."), are left out.
 */
export function parseLsofImages(text: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  let images: string[] | null = null;
  let fd = 'txt';
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    const tag = line[0];
    const value = line.slice(1);
    if (tag === 'p') {
      const pid = Number(value);
      if (!Number.isInteger(pid) || pid <= 0) {
        images = null;
        continue;
      }
      images = out.get(pid) ?? [];
      out.set(pid, images);
      fd = 'txt';
    } else if (tag === 'f') {
      fd = value.trim();
    } else if (tag === 'n' && images && fd === 'txt' && value.startsWith('/') && !images.includes(value)) {
      images.push(value);
    }
  }
  return out;
}

const LIBRARY = /(\.dylib|\.so(\.\d+)*|\/dyld|\/dyld_shared_cache_[\w.]+|\.framework\/Versions\/[^/]+\/[^/]+)$/;

/** The executable among a process's images: the first one that is not a library or dyld. */
export function exeFromImages(images: string[]): string | null {
  return images.find((image) => !LIBRARY.test(image)) ?? null;
}

/** Worth asking lsof about: its command line or its kernel name mentions python. */
export function mayBePython(args: string, ucomm: string | undefined): boolean {
  return /python/i.test(args) || /python/i.test(ucomm ?? '');
}

function firstWord(args: string): string {
  return args.split(' ')[0] ?? '';
}

function factsFor(entries: PsEntry[], names: Map<number, string>, run: CommandRunner): ProcessFacts[] {
  if (!entries.length) return [];
  const lsof = run(LSOF, lsofArgs(entries.map((e) => e.pid)));
  // lsof exits 1 when one of the pids is gone or unreadable, yet lists the others: read stdout anyway.
  const images = lsof.missing ? new Map<number, string[]>() : parseLsofImages(lsof.stdout);
  const out: ProcessFacts[] = [];
  for (const entry of entries) {
    const mapped = images.get(entry.pid);
    // No images: lsof is missing, refused this process, or it exited in between. It is then
    // judged on its name alone (no torch), as on Linux when /proc/PID/maps cannot be read.
    const ucomm = names.get(entry.pid);
    const exe = (mapped && exeFromImages(mapped)) ?? (ucomm && /python/i.test(ucomm) ? ucomm : firstWord(entry.args));
    out.push({ pid: entry.pid, uid: entry.uid, cmdline: entry.args ? [entry.args] : [], exe, images: mapped ?? [] });
  }
  return out;
}

/** Facts of the processes of user `uid` that may be Python (not yet filtered on their images). */
export function listMacProcessFacts(uid: number, run: CommandRunner = runCommand): ProcessFacts[] {
  const ps = run(PS, psListArgs());
  if (ps.missing) return [];
  const names = parsePsNames(run(PS, psNamesArgs()).stdout);
  const candidates = parsePsList(ps.stdout).filter(
    (e) => e.uid === uid && e.pid !== process.pid && mayBePython(e.args, names.get(e.pid)),
  );
  return factsFor(candidates, names, run);
}

/** Facts of one process, or null when ps does not know it. */
export function readMacProcessFacts(pid: number, run: CommandRunner = runCommand): ProcessFacts | null {
  const ps = run(PS, ['-ww', '-o', 'pid=,uid=,args=', '-p', String(pid)]);
  const entry = parsePsList(ps.stdout).find((e) => e.pid === pid);
  if (!entry) return null;
  const names = parsePsNames(run(PS, ['-ww', '-o', 'pid=,ucomm=', '-p', String(pid)]).stdout);
  return factsFor([entry], names, run)[0] ?? null;
}
