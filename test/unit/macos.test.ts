/**
 * macOS process discovery on captured `ps` and `lsof` output (this suite runs on Linux:
 * the commands are replaced by a fake runner that answers from the captures, filtered the
 * way ps -p and lsof -p filter).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  type CommandResult,
  type CommandRunner,
  exeFromImages,
  listMacProcessFacts,
  lsofArgs,
  mayBePython,
  parseLsofImages,
  parsePsList,
  parsePsNames,
  psListArgs,
  psNamesArgs,
  readMacProcessFacts,
} from '../../native-host/src/macos';
import { hasTorch, isPython, listTorchProcesses, pythonVersionFrom, readProcessFacts } from '../../native-host/src/processes';

const UID = process.getuid?.() ?? 501;
const OTHER_UID = UID + 1;
const col = (n: number) => String(n).padStart(5);

// A process that really exists, so that its probe socket is not removed as stale.
let live: ChildProcess;
let LIVE = 0;
beforeAll(() => {
  live = spawn('sleep', ['60'], { stdio: 'ignore' });
  LIVE = live.pid!;
});
afterAll(() => {
  live.kill();
});

const CONDA = 41873; // conda-forge Python 3.11 (static interpreter), torch loaded
const BREW = 41902; // Homebrew Python.framework 3.12 in a venv under a path with spaces, torch loaded
const VIM = 41961; // not Python, but its command line says "python"
const RENAMED = 41977; // Python whose argv was rewritten by setproctitle (vLLM), torch loaded
const BOB = 42010; // another user's Python with torch
const GONE = 42033; // Python that lsof could not read (exited, or refused)
const httpServer = () => LIVE; // Homebrew Python.framework 3.12 without torch

/** `ps -axww -o pid=,uid=,args=` as macOS prints it (pid and uid right-aligned, width 5). */
function psList(): string {
  return [
    `${col(1)} ${col(0)} /sbin/launchd`,
    `${col(412)} ${col(0)} /usr/libexec/logd`,
    `${col(688)} ${col(UID)} /System/Library/CoreServices/Finder.app/Contents/MacOS/Finder`,
    `${col(935)} ${col(UID)} /Applications/Google Chrome.app/Contents/MacOS/Google Chrome`,
    `${col(1204)} ${col(UID)} /Applications/Google Chrome.app/Contents/Frameworks/Google Chrome Framework.framework/Versions/126.0.6478.127/Helpers/Google Chrome Helper (Renderer).app/Contents/MacOS/Google Chrome Helper (Renderer) --type=renderer --lang=en-US --num-raster-threads=4`,
    `${col(3107)} ${col(UID)} -zsh`,
    `${col(CONDA)} ${col(UID)} /Users/ana/miniconda3/envs/moe/bin/python train_moe.py --experts 8 --top-k 2`,
    `${col(BREW)} ${col(UID)} /Users/ana/My Projects/moe serve/.venv/bin/python -m moe_serve --prompt Why is the sky blue? --max-new-tokens 64`,
    `${col(httpServer())} ${col(UID)} python3.12 -m http.server 8000`,
    `${col(VIM)} ${col(UID)} vim notes on python.md`,
    `${col(RENAMED)} ${col(UID)} VLLM::EngineCore`,
    `${col(BOB)} ${col(OTHER_UID)} /Users/bob/miniconda3/bin/python3.11 bob_train.py`,
    `${col(GONE)} ${col(UID)} /Users/ana/miniconda3/envs/moe/bin/python -c import torch, time; time.sleep(1e9)`,
    '',
  ].join('\n');
}

/** `ps -axww -o pid=,ucomm=`: the kernel's 16-character name, padded to its column. */
function psNames(): string {
  const rows: Array<[number, string]> = [
    [1, 'launchd'], [412, 'logd'], [688, 'Finder'], [935, 'Google Chrome'], [1204, 'Google Chrome He'], [3107, 'zsh'],
    [CONDA, 'python3.11'], [BREW, 'Python'], [httpServer(), 'Python'], [VIM, 'vim'], [RENAMED, 'python3.11'],
    [BOB, 'python3.11'], [GONE, 'python3.11'],
  ];
  return rows.map(([pid, name]) => `${col(pid)} ${name.padEnd(16)}`).join('\n') + '\n';
}

const TORCH_CONDA = '/Users/ana/miniconda3/envs/moe/lib/python3.11/site-packages/torch';
const BREW_FW = '/opt/homebrew/Cellar/python@3.12/3.12.4/Frameworks/Python.framework/Versions/3.12';
const BREW_VENV = '/Users/ana/My Projects/moe serve/.venv/lib/python3.12/site-packages';
const SHARED_CACHE = '/System/Volumes/Preboot/Cryptexes/OS/System/Library/dyld/dyld_shared_cache_arm64e';

/** `lsof -n -P -w -a -d txt -F fn -p ...` for every process above, one section each. */
function lsofSections(): Map<number, string[]> {
  return new Map<number, string[]>([
    [CONDA, [
      '/Users/ana/miniconda3/envs/moe/bin/python3.11',
      '/Users/ana/miniconda3/envs/moe/lib/python3.11/lib-dynload/_heapq.cpython-311-darwin.so',
      '/Users/ana/miniconda3/envs/moe/lib/python3.11/lib-dynload/math.cpython-311-darwin.so',
      `${TORCH_CONDA}/_C.cpython-311-darwin.so`,
      `${TORCH_CONDA}/lib/libtorch_python.dylib`,
      `${TORCH_CONDA}/lib/libtorch_cpu.dylib`,
      `${TORCH_CONDA}/lib/libc10.dylib`,
      '/Users/ana/miniconda3/envs/moe/lib/libomp.dylib',
      '/usr/lib/dyld',
      '/private/var/db/timezone/tz/2024a.1.0/icutz/icutz44l.dat',
      SHARED_CACHE,
    ]],
    [BREW, [
      `${BREW_FW}/Resources/Python.app/Contents/MacOS/Python`,
      `${BREW_FW}/Python`,
      `${BREW_FW}/lib/python3.12/lib-dynload/_struct.cpython-312-darwin.so`,
      `${BREW_VENV}/torch/lib/libtorch_cpu.dylib`,
      `${BREW_VENV}/torch/lib/libc10.dylib`,
      `${BREW_VENV}/torch/lib/libomp.dylib`,
      `${BREW_VENV}/torch/lib/libtorch_python.dylib`,
      `${BREW_VENV}/torch/_C.cpython-312-darwin.so`,
      '/usr/lib/dyld',
      SHARED_CACHE,
    ]],
    [httpServer(), [
      `${BREW_FW}/Resources/Python.app/Contents/MacOS/Python`,
      `${BREW_FW}/Python`,
      `${BREW_FW}/lib/python3.12/lib-dynload/_socket.cpython-312-darwin.so`,
      `${BREW_FW}/lib/python3.12/lib-dynload/select.cpython-312-darwin.so`,
      '/usr/lib/dyld',
      SHARED_CACHE,
    ]],
    [VIM, ['/usr/bin/vim', '/usr/lib/dyld', SHARED_CACHE]],
    [RENAMED, [
      '/Users/ana/miniconda3/envs/vllm/bin/python3.11',
      '/Users/ana/miniconda3/envs/vllm/lib/python3.11/site-packages/torch/lib/libtorch_cpu.dylib',
      '/usr/lib/dyld',
      SHARED_CACHE,
    ]],
    [BOB, ['/Users/bob/miniconda3/bin/python3.11', '/Users/bob/miniconda3/lib/python3.11/site-packages/torch/lib/libtorch_cpu.dylib']],
    // GONE: no section, as when the process exited between ps and lsof, or lsof was refused.
  ]);
}

function lsofOutput(pids: number[]): string {
  const sections = lsofSections();
  let out = '';
  for (const pid of [...pids].sort((a, b) => a - b)) {
    const images = sections.get(pid);
    if (!images) continue;
    out += `p${pid}\n` + images.map((image) => `ftxt\nn${image}\n`).join('');
  }
  return out;
}

const ok = (stdout: string, status = 0): CommandResult => ({ missing: false, status, stdout, stderr: '' });
const MISSING: CommandResult = { missing: true, status: null, stdout: '', stderr: '' };

function filterPs(text: string, pid: number): string {
  return text.split('\n').filter((line) => line.trim().split(/\s+/)[0] === String(pid)).map((l) => `${l}\n`).join('');
}

/** Answers ps and lsof from the captures above, the way the real tools would; records calls. */
function fakeRunner(overrides: { lsof?: (args: string[]) => CommandResult; ps?: (args: string[]) => CommandResult } = {}) {
  const calls: string[][] = [];
  const run: CommandRunner = (file, args) => {
    calls.push([file, ...args]);
    if (file === '/usr/sbin/lsof') {
      if (overrides.lsof) return overrides.lsof(args);
      const pids = args[args.indexOf('-p') + 1].split(',').map(Number);
      const stdout = lsofOutput(pids);
      // lsof exits 1 when it could not list one of the pids, yet prints the others.
      const complete = pids.every((pid) => lsofSections().has(pid));
      return ok(stdout, complete ? 0 : 1);
    }
    if (file === '/bin/ps') {
      if (overrides.ps) return overrides.ps(args);
      const text = args.includes('pid=,ucomm=') ? psNames() : psList();
      const p = args.indexOf('-p');
      if (p < 0) return ok(text);
      const one = filterPs(text, Number(args[p + 1]));
      return ok(one, one ? 0 : 1); // macOS ps exits 1 when no process matched
    }
    throw new Error(`unexpected command ${file}`);
  };
  return { run, calls };
}

describe('parsePsList', () => {
  it('splits pid, uid and the whole command line, spaces and all', () => {
    const entries = parsePsList(psList());
    expect(entries).toHaveLength(13);
    expect(entries[0]).toEqual({ pid: 1, uid: 0, args: '/sbin/launchd' });
    expect(entries.find((e) => e.pid === BREW)).toEqual({
      pid: BREW, uid: UID, args: '/Users/ana/My Projects/moe serve/.venv/bin/python -m moe_serve --prompt Why is the sky blue? --max-new-tokens 64',
    });
    expect(entries.find((e) => e.pid === 1204)?.args).toMatch(/^\/Applications\/Google Chrome\.app\/.* --type=renderer /);
    expect(entries.find((e) => e.pid === BOB)?.uid).toBe(OTHER_UID);
  });

  it('keeps leading spaces inside args, and copes with empty args, headers, CRLF and garbage', () => {
    expect(parsePsList('  101   501  indented\r\n  102   501\n  PID   UID ARGS\nps: illegal option -- y\n\n')).toEqual([
      { pid: 101, uid: 501, args: ' indented' },
      { pid: 102, uid: 501, args: '' },
    ]);
    // ps shows the kernel name in parentheses when it cannot read a process's arguments.
    expect(parsePsList('  103   501 (python3.11)\n')).toEqual([{ pid: 103, uid: 501, args: '(python3.11)' }]);
    expect(parsePsList('')).toEqual([]);
  });
});

describe('parsePsNames', () => {
  it('trims the column padding but not the spaces inside a name', () => {
    const names = parsePsNames(psNames());
    expect(names.get(CONDA)).toBe('python3.11');
    expect(names.get(BREW)).toBe('Python');
    expect(names.get(1204)).toBe('Google Chrome He');
    expect(parsePsNames('garbage\n  7 \n')).toEqual(new Map());
  });
});

describe('parseLsofImages', () => {
  it('groups the txt entries by process, in order, without duplicates', () => {
    const text = `${lsofOutput([CONDA, BREW])}p${VIM}\nftxt\nn/usr/bin/vim\nftxt\nn/usr/bin/vim\n`;
    const images = parseLsofImages(text);
    expect([...images.keys()]).toEqual([CONDA, BREW, VIM]);
    expect(images.get(CONDA)![0]).toBe('/Users/ana/miniconda3/envs/moe/bin/python3.11');
    expect(images.get(CONDA)).toHaveLength(11);
    expect(images.get(BREW)).toContain(`${BREW_VENV}/torch/lib/libtorch_cpu.dylib`);
    expect(images.get(VIM)).toEqual(['/usr/bin/vim']);
  });

  it('reads output without f fields (lsof 4.94+ when f is not asked for) and skips other fds', () => {
    const text = 'p500\nfcwd\nn/Users/ana/proj\nftxt\nn/opt/py/bin/python3.12\nf3\nn/Users/ana/proj/log.txt\nftxt\nn/x/libtorch_cpu.dylib\np501\nn/usr/bin/python3\n';
    expect(parseLsofImages(text)).toEqual(new Map([[500, ['/opt/py/bin/python3.12', '/x/libtorch_cpu.dylib']], [501, ['/usr/bin/python3']]]));
  });

  it("ignores lsof's error notes in the name field and junk lines", () => {
    const text = 'p600\nf txt\nnregion info error: Operation not permitted\nlsof: WARNING: something\npnot-a-pid\nn/ignored\n';
    expect(parseLsofImages(text)).toEqual(new Map([[600, []]]));
    expect(parseLsofImages('')).toEqual(new Map());
  });
});

describe('exeFromImages / mayBePython', () => {
  it('picks the executable, not dyld, dylibs, extension modules or the framework binary', () => {
    expect(exeFromImages(lsofSections().get(CONDA)!)).toBe('/Users/ana/miniconda3/envs/moe/bin/python3.11');
    expect(exeFromImages(lsofSections().get(BREW)!)).toBe(`${BREW_FW}/Resources/Python.app/Contents/MacOS/Python`);
    expect(exeFromImages([`${BREW_FW}/Python`, '/usr/lib/dyld', SHARED_CACHE, '/x/libpython3.11.dylib', '/x/_C.cpython-311-darwin.so'])).toBeNull();
    expect(exeFromImages([])).toBeNull();
  });

  it('looks at anything that mentions python in args or ucomm, case-insensitively', () => {
    expect(mayBePython('VLLM::EngineCore', 'python3.11')).toBe(true);
    expect(mayBePython('python3.12 -m http.server', 'Python')).toBe(true);
    expect(mayBePython('/usr/local/bin/ipython', undefined)).toBe(true);
    expect(mayBePython('/Applications/Google Chrome.app/Contents/MacOS/Google Chrome', 'Google Chrome')).toBe(false);
    expect(mayBePython('-zsh', 'zsh')).toBe(false);
  });

  it('feeds the shared helpers: version and torch from macOS image lists', () => {
    const conda = lsofSections().get(CONDA)!;
    expect(pythonVersionFrom(exeFromImages(conda)!, conda)).toBe('3.11');
    expect(hasTorch(conda)).toBe(true);
    const brew = lsofSections().get(BREW)!;
    expect(pythonVersionFrom(exeFromImages(brew)!, brew)).toBe('3.12');
    expect(isPython(exeFromImages(brew)!, brew)).toBe(true);
    expect(hasTorch(lsofSections().get(httpServer())!)).toBe(false);
    expect(isPython('/usr/bin/vim', lsofSections().get(VIM)!)).toBe(false);
  });
});

describe('listMacProcessFacts', () => {
  it('asks ps twice and lsof once, and lsof only about the current user\'s possible Pythons', () => {
    const { run, calls } = fakeRunner();
    const facts = listMacProcessFacts(UID, run);
    expect(calls).toEqual([
      ['/bin/ps', ...psListArgs()],
      ['/bin/ps', ...psNamesArgs()],
      ['/usr/sbin/lsof', ...lsofArgs([CONDA, BREW, httpServer(), VIM, RENAMED, GONE])],
    ]);
    expect(psListArgs()).toEqual(['-axww', '-o', 'pid=,uid=,args=']);
    expect(lsofArgs([1, 2])).toEqual(['-n', '-P', '-w', '-a', '-d', 'txt', '-F', 'fn', '-p', '1,2']);
    expect(facts.map((f) => f.pid)).toEqual([CONDA, BREW, httpServer(), VIM, RENAMED, GONE]);
    expect(facts.find((f) => f.pid === BREW)).toEqual({
      pid: BREW,
      uid: UID,
      cmdline: ['/Users/ana/My Projects/moe serve/.venv/bin/python -m moe_serve --prompt Why is the sky blue? --max-new-tokens 64'],
      exe: `${BREW_FW}/Resources/Python.app/Contents/MacOS/Python`,
      images: lsofSections().get(BREW),
    });
    // No lsof section: judged on its name alone, with no images (so no torch).
    expect(facts.find((f) => f.pid === GONE)).toMatchObject({ exe: 'python3.11', images: [] });
  });

  it('asks lsof nothing when no process may be Python', () => {
    const { run, calls } = fakeRunner({ ps: (args) => ok(args.includes('pid=,ucomm=') ? '  935 Google Chrome   \n' : `  935 ${col(UID)} /Applications/Google Chrome.app/Contents/MacOS/Google Chrome\n`) });
    expect(listMacProcessFacts(UID, run)).toEqual([]);
    expect(calls.map((c) => c[0])).toEqual(['/bin/ps', '/bin/ps']);
  });
});

describe('listTorchProcesses on macOS (captured ps and lsof output)', () => {
  let tmp: string;
  let savedDir: string | undefined;

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-macos-'));
    savedDir = process.env.MOE_DEVTOOLS_SOCKET_DIR;
    process.env.MOE_DEVTOOLS_SOCKET_DIR = tmp;
  });

  afterEach(() => {
    if (savedDir === undefined) delete process.env.MOE_DEVTOOLS_SOCKET_DIR;
    else process.env.MOE_DEVTOOLS_SOCKET_DIR = savedDir;
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('lists the Python processes with torch loaded, and those with a probe listening', () => {
    fs.writeFileSync(path.join(tmp, `probe-${httpServer()}.sock`), '');
    const { run } = fakeRunner();
    const list = listTorchProcesses(new Set([BREW]), '/proc', { platform: 'darwin', run });
    expect(list).toEqual([
      { pid: LIVE, cmdline: 'python3.12 -m http.server 8000', python: '3.12', torch: false, frameworks: [], probe: true, attached: false },
      { pid: CONDA, cmdline: '/Users/ana/miniconda3/envs/moe/bin/python train_moe.py --experts 8 --top-k 2', python: '3.11', torch: true, frameworks: ['torch'], probe: false, attached: false },
      {
        pid: BREW,
        cmdline: '/Users/ana/My Projects/moe serve/.venv/bin/python -m moe_serve --prompt Why is the sky blue? --max-new-tokens 64',
        python: '3.12', torch: true, frameworks: ['torch'], probe: false, attached: true,
      },
      { pid: RENAMED, cmdline: 'VLLM::EngineCore', python: '3.11', torch: true, frameworks: ['torch'], probe: false, attached: false },
    ].sort((a, b) => a.pid - b.pid));
  });

  it('leaves out a Python without torch or probe, a non-Python, another user, and one lsof could not read', () => {
    const pids = listTorchProcesses(new Set(), '/proc', { platform: 'darwin', run: fakeRunner().run }).map((p) => p.pid);
    expect(pids).toEqual([CONDA, BREW, RENAMED]);
    for (const left of [httpServer(), VIM, BOB, GONE, 1204]) expect(pids).not.toContain(left);
  });

  it('skips every process, without throwing, when lsof is missing', () => {
    const { run } = fakeRunner({ lsof: () => MISSING });
    expect(listTorchProcesses(new Set(), '/proc', { platform: 'darwin', run })).toEqual([]);
  });

  it('skips the processes lsof was refused, and lists the others', () => {
    const refused = new Set([CONDA, BREW]);
    const { run } = fakeRunner({
      lsof: (args) => {
        const pids = args[args.indexOf('-p') + 1].split(',').map(Number).filter((p) => !refused.has(p));
        return { missing: false, status: 1, stdout: lsofOutput(pids), stderr: 'lsof: WARNING: can\'t stat() hfs file system /Volumes/X\n' };
      },
    });
    expect(listTorchProcesses(new Set(), '/proc', { platform: 'darwin', run }).map((p) => p.pid)).toEqual([RENAMED]);
  });

  it('returns an empty list when ps is missing or fails', () => {
    expect(listTorchProcesses(new Set(), '/proc', { platform: 'darwin', run: fakeRunner({ ps: () => MISSING }).run })).toEqual([]);
    const failing = fakeRunner({ ps: () => ({ missing: false, status: 1, stdout: '', stderr: 'ps: sysctl: Operation not permitted\n' }) });
    expect(listTorchProcesses(new Set(), '/proc', { platform: 'darwin', run: failing.run })).toEqual([]);
    expect(failing.calls.some((c) => c[0] === '/usr/sbin/lsof')).toBe(false);
  });
});

describe('readProcessFacts on macOS', () => {
  it('reads one process with ps -p and lsof -p (what preflight uses before attaching)', () => {
    const { run, calls } = fakeRunner();
    const facts = readProcessFacts(CONDA, '/proc', { platform: 'darwin', run });
    expect(calls).toEqual([
      ['/bin/ps', '-ww', '-o', 'pid=,uid=,args=', '-p', String(CONDA)],
      ['/bin/ps', '-ww', '-o', 'pid=,ucomm=', '-p', String(CONDA)],
      ['/usr/sbin/lsof', ...lsofArgs([CONDA])],
    ]);
    expect(facts).toMatchObject({ pid: CONDA, uid: UID, exe: '/Users/ana/miniconda3/envs/moe/bin/python3.11' });
    expect(hasTorch(facts!.images)).toBe(true);
    expect(readMacProcessFacts(BOB, run)).toMatchObject({ uid: OTHER_UID });
  });

  it('returns null for a process ps does not know, and images [] when lsof is missing', () => {
    expect(readProcessFacts(4242, '/proc', { platform: 'darwin', run: fakeRunner().run })).toBeNull();
    expect(readProcessFacts(4242, '/proc', { platform: 'darwin', run: fakeRunner({ ps: () => MISSING }).run })).toBeNull();
    const facts = readProcessFacts(BREW, '/proc', { platform: 'darwin', run: fakeRunner({ lsof: () => MISSING }).run });
    expect(facts).toMatchObject({ pid: BREW, exe: 'Python', images: [] });
  });
});
