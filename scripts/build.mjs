// Builds the unpacked extension into dist/extension and the native host into dist/host.
import * as esbuild from 'esbuild';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { buildCli, copySqliteWasm } from './build-cli.mjs';
import { writeHostLauncher } from './host-launcher.mjs';
import { projectPython } from './python-env.mjs';
import { execFileSync } from 'node:child_process';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ext = path.join(root, 'dist/extension');
const host = path.join(root, 'dist/host');
const watch = process.argv.includes('--watch');

fs.rmSync(ext, { recursive: true, force: true });
fs.rmSync(host, { recursive: true, force: true });
fs.mkdirSync(ext, { recursive: true });
fs.mkdirSync(host, { recursive: true });

const common = { bundle: true, sourcemap: 'linked', logLevel: 'warning', legalComments: 'none' };

await esbuild.build({
  ...common,
  entryPoints: {
    background: 'src/background/service-worker.ts',
    devtools: 'src/devtools/devtools.ts',
    panel: 'panels/main.tsx',
    worker: 'panels/worker.ts',
  },
  outdir: ext,
  format: 'iife',
  target: 'chrome116',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  absWorkingDir: root,
});

await esbuild.build({
  ...common,
  // the host, and the history database's thread (history-service.ts starts it from beside host.cjs)
  entryPoints: { host: 'native-host/src/main.ts', 'history-worker': 'native-host/src/history-worker.ts' },
  outdir: host,
  outExtension: { '.js': '.cjs' },
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  absWorkingDir: root,
});
// SQLite's WebAssembly, which node-sqlite3-wasm loads from beside the bundle that requires it
copySqliteWasm(host);

writeHostLauncher(host);
fs.copyFileSync(path.join(root, 'manifest.json'), path.join(ext, 'manifest.json'));
fs.copyFileSync(path.join(root, 'src/devtools/devtools.html'), path.join(ext, 'devtools.html'));
fs.copyFileSync(path.join(root, 'panels/panel.html'), path.join(ext, 'panel.html'));
fs.writeFileSync(path.join(ext, 'icon128.png'), icon(128));

// The probe and the injector travel with the host: the host injects the probe from here.
for (const pkg of ['moe_probe', 'moe_inject']) {
  fs.cpSync(path.join(root, 'native-host', pkg), path.join(host, pkg), {
    recursive: true,
    filter: (src) => !src.includes('__pycache__'),
  });
}

// Bytecode for the project's Python, so a job of that version does not compile the probe on attach
// (many environments set PYTHONDONTWRITEBYTECODE, and dist/ may not be writable by the job).
try {
  execFileSync(projectPython(), ['-m', 'compileall', '-q', path.join(host, 'moe_probe'), path.join(host, 'moe_inject')], { stdio: 'ignore' });
} catch {
  // no Python yet (setup-python not run): jobs compile on first attach instead
}

await buildCli(); // the command line (its launcher also rebuilds it by itself when a source changed)

console.log(`built ${path.relative(root, ext)}, ${path.relative(root, host)} and dist/cli`);
if (watch) console.log('(--watch is not supported; rerun the build)');

/** A small generated icon: a 4x4 grid of expert cells, a few lit. No binary asset to keep in git. */
function icon(size) {
  const lit = new Set([0, 5, 6, 11, 12, 15]);
  const raw = Buffer.alloc((size * 4 + 1) * size);
  for (let y = 0; y < size; y++) {
    raw[y * (size * 4 + 1)] = 0;
    for (let x = 0; x < size; x++) {
      const cell = Math.floor((y / size) * 4) * 4 + Math.floor((x / size) * 4);
      const edge = x % (size / 4) < 4 || y % (size / 4) < 4;
      const [r, g, b, a] = edge ? [0, 0, 0, 0] : lit.has(cell) ? [26, 115, 232, 255] : [189, 193, 198, 255];
      raw.set([r, g, b, a], y * (size * 4 + 1) + 1 + x * 4);
    }
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32 ? zlib.crc32(body) : crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr.set([8, 6, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

function crc32(buf) {
  let c = ~0;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}
