import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AttachError, HINTS } from '../../native-host/src/attach-errors';
import {
  checkLldbResult,
  cStringLiteral,
  findDebugger,
  LLDB_NO_MEMORY,
  LLDB_NO_SYMBOLS,
  lldbArgs,
  lldbExpression,
  lldbStringLiteral,
  type RunResult,
} from '../../native-host/src/debugger-inject';
import { attachMethods, bootstrapSource, injectWith } from '../../native-host/src/inject';
import type { ProcessFacts } from '../../native-host/src/processes';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const venvPython = path.join(root, '.venv/bin/python');
const python = fs.existsSync(venvPython) ? venvPython : 'python3';

function has(program: string): boolean {
  return spawnSync(program, ['--version'], { stdio: 'ignore' }).status === 0;
}

/** The bytes a C compiler (and gdb's C parser) makes of the escapes cStringLiteral uses. */
function decodeCLiteral(literal: string): Buffer {
  expect(literal.startsWith('"') && literal.endsWith('"')).toBe(true);
  const out: number[] = [];
  const body = literal.slice(1, -1);
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    expect(c.charCodeAt(0)).toBeGreaterThanOrEqual(0x20);
    expect(c.charCodeAt(0)).toBeLessThan(0x7f);
    expect(c).not.toBe('"'); // an unescaped quote would end the literal
    if (c !== '\\') {
      out.push(c.charCodeAt(0));
      continue;
    }
    const next = body[++i];
    if (next === '"' || next === '\\') out.push(next.charCodeAt(0));
    else if (next === 'n') out.push(0x0a);
    else {
      const octal = body.slice(i, i + 3);
      expect(octal).toMatch(/^[0-7]{3}$/);
      out.push(parseInt(octal, 8));
      i += 2;
    }
  }
  return Buffer.from(out);
}

const samples = [
  'plain ascii',
  'say "hi"',
  'back\\slash \\n not a newline',
  'line one\nline two\n',
  'tab\there, cr\r, nul\0, bell\x07, del\x7f',
  'données 日本語 🚀',
  '\\"\\\\""',
  'octal then digits: é1234 and \x01' + '7',
];

describe('cStringLiteral', () => {
  it('escapes quotes, backslashes and newlines', () => {
    expect(cStringLiteral('a"b')).toBe('"a\\"b"');
    expect(cStringLiteral('a\\b')).toBe('"a\\\\b"');
    expect(cStringLiteral('a\nb')).toBe('"a\\nb"');
    expect(cStringLiteral('')).toBe('""');
  });

  it('writes control and non-ASCII bytes as three-digit octal escapes of their UTF-8 bytes', () => {
    expect(cStringLiteral('é')).toBe('"\\303\\251"');
    expect(cStringLiteral('\t\r\0\x7f')).toBe('"\\011\\015\\000\\177"');
    // Always three digits, so a digit after an escape is not read as part of it.
    expect(cStringLiteral('\x011')).toBe('"\\0011"');
    expect(cStringLiteral('🚀')).toBe('"\\360\\237\\232\\200"');
  });

  it.each(samples)('round-trips %j byte for byte', (text) => {
    const literal = cStringLiteral(text);
    expect(literal).toMatch(/^"[\x20-\x7e]*"$/);
    expect(decodeCLiteral(literal).equals(Buffer.from(text, 'utf8'))).toBe(true);
  });

  it.runIf(has('gdb'))('is read by gdb as the same bytes', () => {
    const text = samples.join('|') + bootstrapSource('/opt/moe "x"', '/tmp/moe-0');
    const out = execFileSync('gdb', ['-batch', '-nx', '-ex', 'set print elements 0', '-ex', 'set print repeats 0',
      '-ex', `output/x ${cStringLiteral(text)}`], { encoding: 'utf8', timeout: 20000 });
    const bytes = out.trim().replace(/^\{|\}$/g, '').split(',').map((b) => parseInt(b.trim(), 16));
    expect(Buffer.from(bytes.slice(0, -1)).equals(Buffer.from(text, 'utf8'))).toBe(true);
    expect(bytes.at(-1)).toBe(0);
  });
});

// The bootstrap runs in the job's __main__ through PyRun_SimpleString (or sys.remote_exec).
const CHECK = String.raw`
import ast, json, sys
source = sys.stdin.read()
tree = ast.parse(source)
bound = []
for node in ast.walk(tree):
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        bound.append(node.id)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        bound += [a.asname or a.name for a in node.names]
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        bound.append(node.name)
    elif isinstance(node, ast.ExceptHandler) and node.name:
        bound.append(node.name)
    elif isinstance(node, (ast.Global, ast.Nonlocal)):
        bound += node.names
print(json.dumps({"bound": bound, "assigns": [type(n).__name__ for n in ast.walk(tree)
      if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.NamedExpr, ast.Delete))]}))
`;

const RUN = String.raw`
import json, sys
source = sys.stdin.read()
before_path = list(sys.path)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(source, "<bootstrap>", "exec"), namespace)
calls = []
mod = sys.modules.get("moe_probe.inject")
if mod is not None:
    calls = mod.CALLS
print(json.dumps({"names": sorted(k for k in namespace if k != "__builtins__"),
                  "path_restored": sys.path == before_path, "calls": calls}))
`;

describe('bootstrapSource', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-inject-'));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const roots = ['/opt/moe devtools/native-host', '/home/ana/"quoted"\\back\\slash', '/home/anaïs/données/日本', "/tmp/it's\nnew\tline"];

  it.each(roots)('compiles as Python and binds no name at module level (root %j)', (probeRoot) => {
    const source = bootstrapSource(probeRoot, `${probeRoot}/sockets`);
    const out = execFileSync(python, ['-c', CHECK], { input: source, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual({ bound: [], assigns: [] });
  });

  it('the strict check itself catches an assignment', () => {
    const out = execFileSync(python, ['-c', CHECK], { input: 'try:\n x = 1\nexcept Exception as e:\n pass\n', encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual({ bound: ['e', 'x'], assigns: ['Assign'] });
  });

  it('imports moe_probe.inject from the probe root, calls start(socketDir), and leaves sys.path and __main__ as they were', () => {
    const probeRoot = path.join(tmp, 'root "with" \\odd\\ chars é');
    fs.mkdirSync(path.join(probeRoot, 'moe_probe'), { recursive: true });
    fs.writeFileSync(path.join(probeRoot, 'moe_probe', '__init__.py'), '');
    fs.writeFileSync(path.join(probeRoot, 'moe_probe', 'inject.py'), 'CALLS = []\ndef start(socket_dir):\n    CALLS.append(socket_dir)\n');
    const socketDir = path.join(tmp, 'sock\n"dir"');
    const out = execFileSync(python, ['-I', '-c', RUN], { input: bootstrapSource(probeRoot, socketDir), encoding: 'utf8', cwd: tmp });
    expect(JSON.parse(out)).toEqual({ names: ['__name__'], path_restored: true, calls: [socketDir] });
  });

  it('never raises into the job, even when the probe cannot be imported or start fails', () => {
    const broken = path.join(tmp, 'broken');
    fs.mkdirSync(path.join(broken, 'moe_probe'), { recursive: true });
    fs.writeFileSync(path.join(broken, 'moe_probe', '__init__.py'), '');
    fs.writeFileSync(path.join(broken, 'moe_probe', 'inject.py'), 'CALLS = []\ndef start(socket_dir):\n    raise SystemExit(3)\n');
    for (const probeRoot of [path.join(tmp, 'missing'), broken]) {
      const out = execFileSync(python, ['-I', '-c', RUN], { input: bootstrapSource(probeRoot, '/tmp/x'), encoding: 'utf8', cwd: tmp });
      expect(JSON.parse(out)).toMatchObject({ names: ['__name__'], path_restored: true, calls: [] });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// macOS: lldb. The command line and the parsing of lldb's output are checked on captured
// transcripts with the runner faked; where lldb is installed (Linux), the same expression is
// also run against a real Python.

const facts = (exe: string, images: string[], pid = 4242): ProcessFacts => ({ pid, uid: 501, cmdline: [exe], exe, images });
const CONDA_311 = facts('/Users/ana/miniconda3/envs/moe/bin/python3.11', ['/Users/ana/miniconda3/envs/moe/bin/python3.11', '/x/torch/lib/libtorch_cpu.dylib']);
const BREW_312 = facts('/opt/homebrew/Cellar/python@3.12/3.12.4/Frameworks/Python.framework/Versions/3.12/Resources/Python.app/Contents/MacOS/Python',
  ['/opt/homebrew/Cellar/python@3.12/3.12.4/Frameworks/Python.framework/Versions/3.12/Python', '/x/torch/lib/libtorch_cpu.dylib']);
const PY_314 = facts('/Library/Frameworks/Python.framework/Versions/3.14/Resources/Python.app/Contents/MacOS/Python',
  ['/Library/Frameworks/Python.framework/Versions/3.14/Python']);

describe('attachMethods', () => {
  it('on Linux: sys.remote_exec from 3.14 on, then the native injector, then lldb, then gdb', () => {
    expect(attachMethods(CONDA_311, 'linux', 'x64')).toEqual(['ptrace', 'lldb', 'gdb']);
    expect(attachMethods(CONDA_311, 'linux', 'arm64')).toEqual(['ptrace', 'lldb', 'gdb']);
    expect(attachMethods(PY_314, 'linux', 'x64')).toEqual(['remote_exec', 'ptrace', 'lldb', 'gdb']);
    // No native injector for other CPUs: the debuggers remain.
    expect(attachMethods(CONDA_311, 'linux', 'riscv64')).toEqual(['lldb', 'gdb']);
  });

  it('on macOS: lldb below Python 3.14, sys.remote_exec first from 3.14 on', () => {
    expect(attachMethods(CONDA_311, 'darwin', 'arm64')).toEqual(['lldb']);
    expect(attachMethods(BREW_312, 'darwin', 'arm64')).toEqual(['lldb']);
    expect(attachMethods(facts('/usr/local/bin/python', []), 'darwin', 'x64')).toEqual(['lldb']); // version unknown
    expect(attachMethods(PY_314, 'darwin', 'arm64')).toEqual(['remote_exec', 'lldb']);
  });

  it('refuses other platforms below 3.14', () => {
    expect(() => attachMethods(CONDA_311, 'win32', 'x64')).toThrowError(expect.objectContaining({ code: 'unsupported_platform' }));
    expect(attachMethods(PY_314, 'win32', 'x64')).toEqual(['remote_exec']);
  });
});

/** The string literal handed to memcpy in an lldb expression. */
function literalIn(expression: string): string {
  const m = /memcpy\)\(moe_code, ("(?:[^"\\]|\\.)*"), (\d+)UL\)\);/.exec(expression);
  expect(m).not.toBeNull();
  return m![1];
}

describe('lldbStringLiteral', () => {
  it('escapes backticks, which lldb would otherwise evaluate as expressions', () => {
    expect(lldbStringLiteral('a`1+1`b')).toBe('"a\\1401+1\\140b"');
    expect(lldbStringLiteral('`')).toBe('"\\140"');
  });

  it.each([...samples, 'tick ` tock ``', 'after \\` a backslash'])('round-trips %j byte for byte, with no backtick left', (text) => {
    const literal = lldbStringLiteral(text);
    expect(literal).toMatch(/^"[\x20-\x5f\x61-\x7e]*"$/);
    expect(decodeCLiteral(literal).equals(Buffer.from(text, 'utf8'))).toBe(true);
  });
});

describe('lldbArgs', () => {
  const source = bootstrapSource('/Users/ana/Library/Application Support/MoE DevTools/host', '/var/folders/xy/T/moe-devtools-501');

  it('attaches in batch mode, queues the bootstrap, and detaches', () => {
    const args = lldbArgs(4242, source, 'darwin');
    expect(args).toEqual([
      '--batch', '--no-lldbinit', '--no-use-colors',
      '-O', 'settings set target.preload-symbols false',
      '-p', '4242',
      '-o', `expr -l c -- ${lldbExpression(source, 'darwin')}`,
      '-o', 'process detach',
    ]);
    for (const arg of args) expect(arg).not.toMatch(/[\n\r`]/); // one lldb command per -o
  });

  it('uses macOS constants on darwin and Linux ones on linux', () => {
    const mac = lldbExpression('x', 'darwin');
    expect(mac).toContain('dlsym)((void*)-2L, "Py_AddPendingCall")');
    expect(mac).toContain('dlsym)((void*)-2L, "PyRun_SimpleString")');
    expect(mac).toContain(', 3, 0x1002, -1, 0LL)'); // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANON
    const linux = lldbExpression('x', 'linux');
    expect(linux).toContain('dlsym)((void*)0, "Py_AddPendingCall")');
    expect(linux).toContain(', 3, 0x22, -1, 0LL)');
  });

  it('copies the bootstrap byte for byte, with its NUL, and reports the failure codes', () => {
    const expression = lldbExpression(source, 'darwin');
    const m = /memcpy\)\(moe_code, "(?:[^"\\]|\\.)*", (\d+)UL\)\);/.exec(expression)!;
    expect(Number(m[1])).toBe(Buffer.byteLength(source) + 1);
    expect(decodeCLiteral(literalIn(expression)).toString('utf8')).toBe(source);
    expect(expression).toContain(`int moe_r = ${LLDB_NO_SYMBOLS};`);
    expect(expression).toContain(`? ${LLDB_NO_MEMORY} :`);
    expect(expression.endsWith(' } moe_r')).toBe(true); // the value lldb prints as (int) $N
  });
});

// Captured lldb transcripts (stdout then stderr, as the runner joins them).
const LLDB_SUCCESS = `(lldb) settings set target.preload-symbols false
(lldb) process attach --pid 4242
Process 4242 stopped
* thread #1, queue = 'com.apple.main-thread', stop reason = signal SIGSTOP
    frame #0: 0x000000018c5a1ab4 libsystem_kernel.dylib\`__psynch_cvwait + 8
libsystem_kernel.dylib\`__psynch_cvwait:
->  0x18c5a1ab4 <+8>:  b.lo   0x18c5a1ad4               ; <+40>
    0x18c5a1ab8 <+12>: pacibsp
    0x18c5a1abc <+16>: stp    x29, x30, [sp, #-0x10]!
    0x18c5a1ac0 <+20>: mov    x29, sp
  thread #2, stop reason = signal SIGSTOP
    frame #0: 0x000000018c59f9ec libsystem_kernel.dylib\`__workq_kernreturn + 8
Target 0: (Python) stopped.
Executable module set to "/opt/homebrew/Cellar/python@3.12/3.12.4/Frameworks/Python.framework/Versions/3.12/Resources/Python.app/Contents/MacOS/Python".
Architecture set to: arm64-apple-macosx-.
(lldb) expr -l c -- void *moe_add = ((void*(*)(void*, const char*))dlsym)((void*)-2L, "Py_AddPendingCall"); ...
(int) $0 = 0
(lldb) process detach
Process 4242 detached
`;
const NOT_ALLOWED_NEW = `(lldb) settings set target.preload-symbols false
(lldb) process attach --pid 4242

error: attach by pid '4242' failed -- attach failed (Not allowed to attach to process.  Look in the console messages (Console.app), near the debugserver entries, when the attach failed.  The subsystem that denied the attach permission will likely have logged an informative message about why it was denied.)
`;
const NOT_ALLOWED_OLD = `(lldb) process attach --pid 4242

error: attach failed: attach failed (Not allowed to attach to process.  Look in the console messages (Console.app), near the debugserver entries when the attached failed.  The subsystem that denied the attach permission will likely have logged an informative message about why it was denied.)
`;
const ERROR_1 = `(lldb) process attach --pid 4242

error: attach failed: Error 1
`;
const XCRUN_MISSING = `
xcrun: error: invalid active developer path (/Library/Developer/CommandLineTools), missing xcrun at: /Library/Developer/CommandLineTools/usr/bin/xcrun
`;
const UNDECLARED = `(lldb) process attach --pid 4242
Process 4242 stopped
(lldb) expr -l c -- void *add = ...

error: expression failed to parse:
error: <user expression 0>:1:21: use of undeclared identifier 'dlsym'
void *moe_add = ((void*(*)(void*, const char*))dlsym)((void*)-2L, "Py_AddPendingCall");
                                           ^
`;
const INTERRUPTED = `(lldb) process attach --pid 4242
Process 4242 stopped
(lldb) expr -l c -- void *add = ...

error: Execution was interrupted, reason: EXC_BAD_ACCESS (code=1, address=0x0).
The process has been returned to the state before expression evaluation.
`;
const returned = (n: number) => LLDB_SUCCESS.replace('(int) $0 = 0', `(int) $3 = ${n}`);

const result = (out: string, extra: Partial<RunResult> = {}): RunResult => ({ missing: false, ok: true, out, ...extra });
const alive = () => true;
const dead = () => false;

function attachError(fn: () => void): AttachError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(AttachError);
    return err as AttachError;
  }
  throw new Error('expected an AttachError');
}

describe('checkLldbResult on captured lldb output', () => {
  it('accepts Py_AddPendingCall returning 0, whatever the $N', () => {
    expect(() => checkLldbResult(result(LLDB_SUCCESS), 4242, alive)).not.toThrow();
    expect(() => checkLldbResult(result(returned(0)), 4242, alive)).not.toThrow();
  });

  it.each([NOT_ALLOWED_NEW, NOT_ALLOWED_OLD, ERROR_1])('reports a refused attach with the macOS hint (%#)', (out) => {
    const e = attachError(() => checkLldbResult(result(out, { ok: false }), 4242, alive));
    expect(e.code).toBe('ptrace_denied');
    expect(e.message).toMatch(/^macOS did not let lldb attach to process 4242: attach/);
    expect(e.message.length).toBeLessThan(300);
    expect(e.hint).toBe(HINTS.macos_attach);
    expect(e.hint).toMatch(/hardened runtime/);
    expect(e.hint).toMatch(/python -m moe_probe run/);
  });

  it('says the process exited when the attach failed because it is gone', () => {
    const gone = `(lldb) process attach --pid 4242\nerror: attach failed: no such process.\n`;
    expect(attachError(() => checkLldbResult(result(gone, { ok: false }), 4242, dead)).code).toBe('process_exited');
    expect(attachError(() => checkLldbResult(result('', { ok: false }), 4242, dead)).code).toBe('process_exited');
  });

  it('says lldb is missing when it is not installed, or is only the xcrun stub', () => {
    const missing = attachError(() => checkLldbResult(result('', { missing: true, ok: false }), 4242, alive));
    expect(missing.code).toBe('lldb_missing');
    expect(missing.hint).toBe(HINTS.lldb);
    expect(missing.hint).toMatch(/xcode-select --install/);
    expect(attachError(() => checkLldbResult(result(XCRUN_MISSING, { ok: false }), 4242, alive)).code).toBe('lldb_missing');
  });

  it('passes on the expression error lldb gave', () => {
    const e = attachError(() => checkLldbResult(result(UNDECLARED, { ok: false }), 4242, alive));
    expect(e.code).toBe('inject_failed');
    expect(e.message).toBe("lldb could not queue the probe in process 4242: error: <user expression 0>:1:21: use of undeclared identifier 'dlsym'");
    const i = attachError(() => checkLldbResult(result(INTERRUPTED, { ok: false }), 4242, alive));
    expect(i.message).toMatch(/Execution was interrupted, reason: EXC_BAD_ACCESS/);
  });

  it('explains the expression\'s own failure codes and a refused pending call', () => {
    expect(attachError(() => checkLldbResult(result(returned(LLDB_NO_SYMBOLS)), 4242, alive)).message).toMatch(/does not export Python's C API/);
    expect(attachError(() => checkLldbResult(result(returned(LLDB_NO_MEMORY)), 4242, alive)).message).toMatch(/could not map a page/);
    const refused = attachError(() => checkLldbResult(result(returned(-1)), 4242, alive));
    expect(refused.code).toBe('inject_failed');
    expect(refused.message).toMatch(/Py_AddPendingCall returned -1/);
  });
});

describe('inject with method lldb (runner faked)', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-lldb-'));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // A pid no process has (above Linux's pid_max), so the SIGCONT after lldb reaches nobody.
  const job = { ...BREW_312, pid: 4194305 };

  it('runs lldb with lldbArgs for the bootstrap and accepts its success output', async () => {
    const calls: Array<{ file: string; args: string[]; timeoutMs: number }> = [];
    const run = async (file: string, args: string[], timeoutMs: number) => {
      calls.push({ file, args, timeoutMs });
      return result(LLDB_SUCCESS.replaceAll('4242', String(job.pid)));
    };
    const socketDir = path.join(tmp, 'sockets');
    fs.mkdirSync(socketDir);
    const before = Date.now() / 1000;
    await injectWith(job, 'lldb', { probeRoot: '/opt/moe host', socketDir, lldbPath: '/usr/bin/lldb', platform: 'darwin', run, attachTimeoutMs: 9000 });
    // The bootstrap carries the moment after which it does nothing: the host's own deadline.
    const deadline = Number(/deadline=([\d.]+)/.exec(calls[0]?.args.join(' ') ?? '')?.[1]);
    expect(deadline).toBeGreaterThanOrEqual(before + 9 - 0.01);
    expect(deadline).toBeLessThan(Date.now() / 1000 + 9 + 0.01);
    expect(calls).toEqual([{ file: '/usr/bin/lldb', args: lldbArgs(job.pid, bootstrapSource('/opt/moe host', socketDir, { deadline }), 'darwin'), timeoutMs: 30000 }]);
  });

  it('rejects with lldb_missing when lldb is not there', async () => {
    const run = async () => ({ missing: true, ok: false, out: '\n' });
    await expect(injectWith(job, 'lldb', { probeRoot: '/opt/moe', socketDir: tmp, platform: 'darwin', run })).rejects.toMatchObject({ code: 'lldb_missing' });
  });

  it('rejects with ptrace_denied-or-exited on a refused attach (here the pid is gone: process_exited)', async () => {
    const run = async () => result(NOT_ALLOWED_NEW, { ok: false });
    await expect(injectWith(job, 'lldb', { probeRoot: '/opt/moe', socketDir: tmp, platform: 'darwin', run })).rejects.toMatchObject({ code: 'process_exited' });
  });
});

function ptraceAllowed(): boolean {
  if (process.getuid?.() === 0) return true;
  try {
    return Number(fs.readFileSync('/proc/sys/kernel/yama/ptrace_scope', 'utf8').trim()) === 0;
  } catch {
    return true;
  }
}

// lldb's expression parser is the same on Linux; where lldb is installed, run the real thing.
const lldb = findDebugger('lldb');

describe.runIf(process.platform === 'linux' && lldb !== null && ptraceAllowed())('lldbArgs against a real Python (lldb on Linux)', () => {
  it('queues code that then runs on the main thread, byte for byte', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-lldb-live-'));
    const marker = path.join(dir, 'ran "it" `here` é');
    const job = spawn(python, ['-u', '-c', 'import time\nprint("ready", flush=True)\nwhile True:\n    time.sleep(0.01)\n'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        job.stdout!.once('data', () => resolve());
        job.once('exit', () => reject(new Error('job exited')));
      });
      const source = `open(${JSON.stringify(marker)}, "w", encoding="utf-8").write(__import__("threading").current_thread().name + " \`x\` é \\\\ \\"q\\"")\n`;
      const out = spawnSync(lldb!, lldbArgs(job.pid!, source, 'linux'), { encoding: 'utf8', timeout: 60000, stdio: ['ignore', 'pipe', 'pipe'] });
      expect(() => checkLldbResult(result(`${out.stdout}\n${out.stderr}`, { ok: out.status === 0 }), job.pid!)).not.toThrow();
      const deadline = Date.now() + 10000;
      while (!fs.existsSync(marker) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(fs.readFileSync(marker, 'utf8')).toBe('MainThread `x` é \\ "q"');
      expect(job.exitCode).toBeNull(); // still running after lldb detached
    } finally {
      job.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 90000);
});
