/**
 * The probe as a pip package, in a fresh virtual environment: `pip install ./native-host`,
 * `import moe_probe` gives the version (without importing torch), `python -m moe_probe run`
 * starts a real job that the command line then records over the probe's socket.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import packageJson from '../../package.json';
import { ROOT, pythonPath, startDemoJob, type Job } from './jobs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-pip-'));
const venv = path.join(tmp, 'venv');
const python = path.join(venv, 'bin/python');
// The fresh environment must not see the checkout's probe: no PYTHONPATH, and not run from native-host.
const env = { ...process.env, PYTHONPATH: '', PIP_RETRIES: '0' };
let job: Job | undefined;

beforeAll(() => {
  // The same interpreter the project's .venv was made from, so that its torch can be lent below.
  const base = execFileSync(pythonPath(), ['-c', 'import sys; print(sys._base_executable)'], { encoding: 'utf8' }).trim();
  execFileSync(base, ['-m', 'venv', venv], { env });
}, 120_000);

afterAll(async () => {
  await job?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const runPython = (args: string[]) => spawnSync(python, args, { encoding: 'utf8', env, cwd: tmp });

describe('pip install ./native-host', () => {
  it('installs the probe package into a fresh venv, with its version and no dependencies', () => {
    const pip = spawnSync(python, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', './native-host'], { encoding: 'utf8', env, cwd: ROOT });
    expect(pip.status, pip.stderr).toBe(0);
    const imported = runPython(['-c', 'import json, sys, moe_probe; print(json.dumps([moe_probe.__version__, moe_probe.__file__, "torch" in sys.modules]))']);
    expect(imported.status, imported.stderr).toBe(0);
    const [version, file, torchLoaded] = JSON.parse(imported.stdout);
    expect(version).toBe(packageJson.version);
    expect(file).toBe(path.join(venv, 'lib', fs.readdirSync(path.join(venv, 'lib'))[0]!, 'site-packages/moe_probe/__init__.py'));
    expect(torchLoaded).toBe(false); // importing the package needs no torch
    expect(runPython(['-m', 'moe_probe', '--version']).stdout).toBe(`moe_probe ${packageJson.version}\n`);
    expect(spawnSync(path.join(venv, 'bin/moe-probe'), ['--version'], { encoding: 'utf8', env }).stdout).toBe(`moe_probe ${packageJson.version}\n`);
    const show = runPython(['-m', 'pip', 'show', 'moe-probe']);
    expect(show.stdout).toMatch(/^Requires: *$/m); // the job's own torch is never replaced
    // Without any framework, attaching listens, and a host that connects is told why there is no
    // model to watch (its hello carries the no_moe error), with no framework loaded by the probe.
    const noFramework = runPython(['-c', [
      'import moe_probe, socket, sys',
      'from moe_probe.framing import FrameReader',
      's = socket.socket(socket.AF_UNIX)',
      's.connect(moe_probe.attach())',
      'reader, frames = FrameReader(), []',
      'while not frames:',
      '    frames += reader.feed(s.recv(65536))',
      'print(frames[0]["t"], frames[0]["error"]["code"], frames[0]["error"]["message"])',
      'print("torch loaded:", "torch" in sys.modules)',
    ].join('\n')]);
    expect(noFramework.stdout, noFramework.stderr).toMatch(/^hello no_moe This Python process has not imported torch, JAX, Keras \(TensorFlow\) or ONNX Runtime, so there is no model to watch\.\ntorch loaded: False\n$/);
  });

  it('runs a job under python -m moe_probe run, and the command line records it over the socket', async () => {
    // The job needs torch and transformers. Rather than download them again, this venv borrows
    // the project's site-packages through a .pth file, which Python appends after the venv's own
    // site-packages: moe_probe still comes from the fresh install (checked below).
    const projectSite = execFileSync(pythonPath(), ['-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], { encoding: 'utf8' }).trim();
    const venvSite = runPython(['-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']).stdout.trim();
    fs.writeFileSync(path.join(venvSite, 'borrowed-project-packages.pth'), `${projectSite}\n`);
    expect(runPython(['-c', 'import moe_probe; print(moe_probe.__file__)']).stdout.trim()).toBe(path.join(venvSite, 'moe_probe/__init__.py'));

    job = await startDemoJob([], 4, { python, env: { PYTHONPATH: '' } });
    const out = path.join(tmp, 'pip-job.moerec');
    const cli = (args: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'bin/moe-devtools.mjs'), ...args], { encoding: 'utf8' });
    const list = JSON.parse(cli(['list', '--json']).stdout);
    expect(list.find((p: { pid: number }) => p.pid === job!.pid)).toMatchObject({ probe: true, torch: true });
    const record = cli(['record', String(job.pid), '--seconds', '3', '-o', out]);
    expect(record.status, record.stderr).toBe(0);
    const report = JSON.parse(cli(['report', out, '--json']).stdout);
    expect(report.job.method).toBe('socket');
    expect(report.job.argv[0]).toBe(path.join(ROOT, 'scripts/demo_job.py'));
    expect(report.window.passes).toBeGreaterThan(0);
    expect(report.layers).toHaveLength(4);
    expect(job.process.exitCode).toBeNull();
  });
});
