// Starts a real TensorBoard (the `tensorboard` of the project's Python environment) on a free
// port, for the export tests and the README screenshot.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The tensorboard executable next to the given Python (a venv's bin/). */
export function tensorboardPath(python) {
  const exe = path.join(path.dirname(python), 'tensorboard');
  if (!fs.existsSync(exe)) throw new Error(`No tensorboard next to ${python}: run \`npm run setup-python\`.`);
  return exe;
}

/** Start `tensorboard --logdir DIR --port 0`; resolves with its URL once it serves. */
export async function startTensorBoard(python, logdir, { timeoutMs = 60000 } = {}) {
  const child = spawn(tensorboardPath(python), ['--logdir', logdir, '--host', '127.0.0.1', '--port', '0', '--reload_interval', '1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`TensorBoard did not start within ${timeoutMs} ms: ${output}`)), timeoutMs);
    const onData = (d) => {
      output += d;
      const m = /TensorBoard \S+ at (http:\/\/[^\s/]+\/)/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`TensorBoard exited (${code}): ${output}`));
    });
  });
  return {
    url,
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    }),
  };
}
