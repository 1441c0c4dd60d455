import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootstrapSource, cStringLiteral } from '../../native-host/src/inject';

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
