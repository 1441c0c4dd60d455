// Creates .venv with torch, transformers, the other frameworks the probe reads (JAX/Flax, TensorFlow,
// ONNX Runtime) and the test tools (idempotent: a no-op when satisfied).
//   --if-needed: only when .venv is missing or lacks one of them (what `npm test` runs first).
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, VENV_PYTHON } from './python-env.mjs';

function findBasePython() {
  for (const candidate of [process.env.PYTHON, 'python3', 'python']) {
    if (!candidate) continue;
    try {
      const version = execFileSync(candidate, ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], { encoding: 'utf8' }).trim();
      const [major, minor] = version.split('.').map(Number);
      if (major === 3 && minor >= 10) return candidate;
    } catch {
      // not installed; try the next one
    }
  }
  console.error('setup-python: Python 3.10 or newer is needed (set PYTHON=/path/to/python3).');
  process.exit(1);
}

const REQUIRED_MODULES = ['torch', 'transformers', 'safetensors', 'numpy', 'msgpack', 'pytest', 'scipy', 'tensorboard', 'jax', 'flax', 'tensorflow', 'onnx', 'onnxruntime', 'accelerate'];

/** Whether .venv already has everything (a quick import check instead of a pip run). */
function venvReady() {
  if (!fs.existsSync(VENV_PYTHON)) return false;
  try {
    const check = `import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ${JSON.stringify(REQUIRED_MODULES)}))`;
    execFileSync(VENV_PYTHON, ['-c', check], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

if (process.argv.includes('--if-needed') && venvReady()) process.exit(0);

if (!fs.existsSync(VENV_PYTHON)) {
  const base = findBasePython();
  console.log(`setup-python: creating .venv with ${base}`);
  execFileSync(base, ['-m', 'venv', path.join(ROOT, '.venv')], { stdio: 'inherit' });
}
// PIP_RETRIES=0: on machines with a local package mirror and no internet, pip would otherwise
// spend a minute retrying the unreachable default index.
execFileSync(VENV_PYTHON, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '-r', path.join(ROOT, 'native-host/requirements-dev.txt')], {
  stdio: 'inherit',
  env: { PIP_RETRIES: '0', ...process.env },
});
// Optional: wandb, for the test of the W&B export. Its own dependencies are not all on every
// package index (a local mirror may lack some of OpenTelemetry's), so a failure here is a note,
// not an error; that test then reports itself skipped.
const hasWandb = spawnSync(VENV_PYTHON, ['-c', 'import wandb'], { stdio: 'ignore' }).status === 0;
if (!hasWandb) {
  const pip = spawnSync(VENV_PYTHON, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', 'wandb'], {
    encoding: 'utf8', env: { PIP_RETRIES: '0', ...process.env },
  });
  if (pip.status !== 0) {
    const why = (pip.stderr.split('\n').find((l) => l.startsWith('ERROR:')) ?? 'pip failed').trim();
    console.log(`setup-python: note: wandb could not be installed (${why}); the W&B export test will be skipped (or set MOE_WANDB_PYTHON)`);
  }
}
console.log('setup-python: .venv is ready');
