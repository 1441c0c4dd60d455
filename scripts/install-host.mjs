// Registers (or with --uninstall removes) the native messaging host com.moe_devtools.host.
//
//   npm run install-host                         Chrome, Chromium, Edge and Brave, in your user profile folders
//   npm run install-host -- --user-data-dir DIR  inside one browser profile folder only (what the tests use)
//   npm run uninstall-host [-- --user-data-dir DIR]
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeHostLauncher } from './host-launcher.mjs';

const HOST_NAME = 'com.moe_devtools.host';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const hostDir = path.join(root, 'dist/host');
const launcher = path.join(hostDir, 'moe-devtools-host');

function fail(message) {
  console.error(`install-host: ${message}`);
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { uninstall: false, userDataDirs: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--uninstall') opts.uninstall = true;
    else if (arg === '--user-data-dir') {
      const dir = argv[++i];
      if (!dir) fail('--user-data-dir needs a folder');
      opts.userDataDirs.push(path.resolve(dir));
    } else if (arg.startsWith('--user-data-dir=')) opts.userDataDirs.push(path.resolve(arg.slice(16)));
    else if (arg === '--help' || arg === '-h') {
      console.log('usage: install-host.mjs [--uninstall] [--user-data-dir DIR ...]');
      process.exit(0);
    } else fail(`unknown argument ${arg}`);
  }
  return opts;
}

/** The per-user NativeMessagingHosts folders of Chrome, Chromium, Edge and Brave. */
function browserHostDirs() {
  const home = os.homedir();
  const names =
    process.platform === 'darwin'
      ? ['Google/Chrome', 'Chromium', 'Microsoft Edge', 'BraveSoftware/Brave-Browser'].map((n) => path.join(home, 'Library/Application Support', n))
      : process.platform === 'linux'
        ? ['google-chrome', 'chromium', 'microsoft-edge', 'BraveSoftware/Brave-Browser'].map((n) => path.join(home, '.config', n))
        : fail(`native host registration on ${process.platform} is not supported yet (Linux and macOS are)`);
  return names.map((dir) => path.join(dir, 'NativeMessagingHosts'));
}

function extensionId() {
  const manifest = JSON.parse(fs.readFileSync(path.join(root, 'manifest.json'), 'utf8'));
  const hex = createHash('sha256').update(Buffer.from(manifest.key, 'base64')).digest('hex').slice(0, 32);
  return [...hex].map((c) => String.fromCharCode(97 + parseInt(c, 16))).join('');
}

const opts = parseArgs(process.argv.slice(2));
const dirs = opts.userDataDirs.length ? opts.userDataDirs.map((d) => path.join(d, 'NativeMessagingHosts')) : browserHostDirs();

if (opts.uninstall) {
  for (const dir of dirs) {
    const file = path.join(dir, `${HOST_NAME}.json`);
    if (fs.existsSync(file)) {
      fs.rmSync(file);
      console.log(`removed ${file}`);
    }
  }
  process.exit(0);
}

if (!fs.existsSync(path.join(hostDir, 'host.cjs'))) fail('dist/host/host.cjs is missing: run `npm run build` first');

writeHostLauncher(hostDir);

const manifest = {
  name: HOST_NAME,
  description: 'MoE DevTools native host: attaches to PyTorch MoE jobs and relays their routing',
  path: launcher,
  type: 'stdio',
  allowed_origins: [`chrome-extension://${extensionId()}/`],
};
for (const dir of dirs) {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${HOST_NAME}.json`);
  fs.writeFileSync(file, `${JSON.stringify(manifest, null, 2)}\n`);
  console.log(`registered ${file}`);
}
console.log(`extension id ${manifest.allowed_origins[0]}`);
