import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { frameworksLoaded, hasTorch, imagesFromMaps, isPython, listTorchProcesses, pythonVersionFrom, readProcessFacts } from '../../native-host/src/processes';

// Captured-style /proc/PID/maps text (addresses shortened where it does not matter).
const MAPS_LIBPYTHON = `
55d0c1a00000-55d0c1a01000 r--p 00000000 fd:01 1048601                    /usr/bin/python3.11
55d0c1a01000-55d0c1a02000 r-xp 00001000 fd:01 1048601                    /usr/bin/python3.11
55d0c2b9e000-55d0c2dbf000 rw-p 00000000 00:00 0                          [heap]
7f3a10000000-7f3a10021000 rw-p 00000000 00:00 0
7f3a1c000000-7f3a1c2b4000 r--p 00000000 fd:01 1062993                    /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0
7f3a1c2b4000-7f3a1c5c1000 r-xp 002b4000 fd:01 1062993                    /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0
7f3a1d000000-7f3a1d200000 r-xp 00000000 fd:01 1054201                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a1e000000-7f3a1e001000 rw-s 00000000 00:05 4242                       /dev/shm/torch_1234_567 (deleted)
7ffd5a9d0000-7ffd5a9f1000 rw-p 00000000 00:00 0                          [stack]
7ffd5a9f8000-7ffd5a9fa000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`;

// python.org / uv / pyenv builds: the interpreter is one static executable, no libpython.
const MAPS_STATIC_312_TORCH = `
5600aa000000-5600aa100000 r--p 00000000 fd:01 2000001                    /opt/python/3.12.7/bin/python3.12
5600aa100000-5600aa400000 r-xp 00100000 fd:01 2000001                    /opt/python/3.12.7/bin/python3.12
7f0000000000-7f0000100000 r-xp 00000000 fd:01 3000001                    /home/ana/proj/.venv/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so
7f0000100000-7f0000200000 r-xp 00000000 fd:01 3000002                    /home/ana/proj/.venv/lib/python3.12/site-packages/torch/lib/libtorch_python.so
7f0000200000-7f0000300000 r-xp 00000000 fd:01 3000003                    /home/ana/proj/.venv/lib/python3.12/site-packages/torch/lib/libc10.so
7f0000300000-7f0000400000 r-xp 00000000 fd:01 1054201                    /usr/lib/x86_64-linux-gnu/libc.so.6
`;

const MAPS_BASH = `
5600bb000000-5600bb100000 r-xp 00000000 fd:01 1040001                    /usr/bin/bash
7f0000300000-7f0000400000 r-xp 00000000 fd:01 1054201                    /usr/lib/x86_64-linux-gnu/libc.so.6
`;

describe('imagesFromMaps', () => {
  it('lists each mapped file once, without anonymous maps, [heap]-style names or " (deleted)"', () => {
    expect(imagesFromMaps(MAPS_LIBPYTHON)).toEqual([
      '/usr/bin/python3.11',
      '/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0',
      '/usr/lib/x86_64-linux-gnu/libc.so.6',
      '/dev/shm/torch_1234_567',
    ]);
  });

  it('keeps paths with spaces whole', () => {
    const maps = '7f00-7f01 r-xp 00000000 fd:01 9 /home/ana/My Projects/venv/lib/libtorch_cpu.so\n';
    expect(imagesFromMaps(maps)).toEqual(['/home/ana/My Projects/venv/lib/libtorch_cpu.so']);
  });

  it('copes with empty text and CRLF-free garbage', () => {
    expect(imagesFromMaps('')).toEqual([]);
    expect(imagesFromMaps('\n\n[heap]\nnot a maps line\n')).toEqual([]);
  });
});

describe('pythonVersionFrom / isPython / hasTorch', () => {
  it('reads the version from libpython3.11.so.1.0 whatever the executable is called', () => {
    const images = imagesFromMaps(MAPS_LIBPYTHON);
    expect(pythonVersionFrom('/usr/bin/python3', images)).toBe('3.11');
    expect(pythonVersionFrom('/opt/conda/bin/ipython', images)).toBe('3.11');
    expect(isPython('/opt/conda/bin/ipython', images)).toBe(true);
    expect(hasTorch(images)).toBe(false);
  });

  it('reads the version from a static python3.12 executable with torch loaded', () => {
    const images = imagesFromMaps(MAPS_STATIC_312_TORCH);
    expect(pythonVersionFrom('/opt/python/3.12.7/bin/python3.12', images)).toBe('3.12');
    expect(isPython('/opt/python/3.12.7/bin/python3.12', images)).toBe(true);
    expect(hasTorch(images)).toBe(true);
  });

  it('recognises a venv interpreter called plain "python" as Python', () => {
    // /proc/PID/exe of a `venv --copies` interpreter is the venv's own file.
    const images = imagesFromMaps(MAPS_STATIC_312_TORCH).filter((i) => !i.includes('/opt/python/'));
    expect(isPython('/home/ana/proj/.venv/bin/python', images)).toBe(true);
    expect(isPython('/home/ana/proj/.venv/bin/python3', [])).toBe(true);
    expect(hasTorch(images)).toBe(true);
  });

  it('handles free-threaded builds and macOS framework builds', () => {
    expect(pythonVersionFrom('/usr/bin/python3.13t', [])).toBe('3.13');
    expect(pythonVersionFrom('/x', ['/usr/lib/libpython3.13t.so.1.0'])).toBe('3.13');
    expect(pythonVersionFrom('/x', ['/usr/local/lib/libpython3.14.dylib'])).toBe('3.14');
    expect(pythonVersionFrom('/Library/Frameworks/Python.framework/Versions/3.12/Resources/Python.app/Contents/MacOS/Python',
      ['/Library/Frameworks/Python.framework/Versions/3.12/Python'])).toBe('3.12');
  });

  it('says null / false for things that are not Python', () => {
    const images = imagesFromMaps(MAPS_BASH);
    expect(pythonVersionFrom('/usr/bin/bash', images)).toBeNull();
    expect(isPython('/usr/bin/bash', images)).toBe(false);
    expect(isPython('/usr/bin/python3-config', [])).toBe(false);
    expect(isPython('/usr/bin/pythonista', [])).toBe(false);
    expect(pythonVersionFrom('/usr/bin/python3', [])).toBeNull();
    expect(isPython('/usr/bin/python3', [])).toBe(true);
  });

  it('finds torch only in libtorch itself, not in look-alikes', () => {
    expect(hasTorch(['/x/torch/lib/libtorch.so'])).toBe(true);
    expect(hasTorch(['/x/torch/lib/libtorch_cuda.so'])).toBe(true);
    expect(hasTorch(['/x/torch/lib/libtorch_cpu.dylib'])).toBe(true);
    expect(hasTorch(['/x/torchaudio/lib/libtorchaudio.so'])).toBe(false);
    expect(hasTorch(['/x/torch/lib/libtorch_global_deps.so'])).toBe(false);
    expect(hasTorch(['/x/torch/lib/libc10.so'])).toBe(false);
    expect(hasTorch([])).toBe(false);
  });

  it('names every framework a process has loaded, from the libraries each one maps', () => {
    // Paths as /proc/PID/maps lists them for jaxlib 0.10, TensorFlow 2.21 and ONNX Runtime 1.30 (pip wheels).
    const sp = '/home/ana/.venv/lib/python3.11/site-packages';
    const jax = [`${sp}/jaxlib/_jax.so`, `${sp}/jaxlib/libjax_common.so`, `${sp}/jaxlib/mlir/_mlir_libs/_mlir.so`];
    const tf = [`${sp}/tensorflow/libtensorflow_framework.so.2`, `${sp}/tensorflow/libtensorflow_cc.so.2`, `${sp}/tensorflow/python/_pywrap_tensorflow_internal.so`];
    const ort = [`${sp}/onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so`, `${sp}/onnxruntime/capi/libonnxruntime_providers_shared.so`];
    expect(frameworksLoaded(jax)).toEqual(['jax']);
    expect(frameworksLoaded(tf)).toEqual(['tensorflow']);
    expect(frameworksLoaded(ort)).toEqual(['onnxruntime']);
    expect(frameworksLoaded(['/opt/jaxlib-0.4.30/jaxlib/xla_extension.so'])).toEqual(['jax']);
    // A TensorFlow job imports jax too (tf.lite does when jax is installed): both are named, in one order.
    expect(frameworksLoaded([...ort, ...tf, ...jax, '/x/torch/lib/libtorch_cpu.so'])).toEqual(['torch', 'jax', 'tensorflow', 'onnxruntime']);
    // Look-alikes: the onnx package alone (no runtime), tensorboard, numpy.
    expect(frameworksLoaded([`${sp}/onnx/onnx_cpp2py_export.cpython-311-x86_64-linux-gnu.so`, `${sp}/tensorboard/_x.so`, `${sp}/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so`])).toEqual([]);
    expect(frameworksLoaded(imagesFromMaps(MAPS_STATIC_312_TORCH))).toEqual(['torch']);
  });
});

describe('listTorchProcesses on a fake /proc', () => {
  let tmp: string;
  let proc: string;
  let sockets: string;
  let savedDir: string | undefined;

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-proc-'));
    proc = path.join(tmp, 'proc');
    sockets = path.join(tmp, 'sockets');
    fs.mkdirSync(proc);
    fs.mkdirSync(sockets);
    savedDir = process.env.MOE_DEVTOOLS_SOCKET_DIR;
    process.env.MOE_DEVTOOLS_SOCKET_DIR = sockets;
  });

  afterEach(() => {
    if (savedDir === undefined) delete process.env.MOE_DEVTOOLS_SOCKET_DIR;
    else process.env.MOE_DEVTOOLS_SOCKET_DIR = savedDir;
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  function fakeProcess(pid: number | string, opts: { cmdline?: string[]; exe?: string; maps?: string }) {
    const dir = path.join(proc, String(pid));
    fs.mkdirSync(dir);
    if (opts.cmdline) fs.writeFileSync(path.join(dir, 'cmdline'), `${opts.cmdline.join('\0')}\0`);
    if (opts.exe) fs.symlinkSync(opts.exe, path.join(dir, 'exe')); // dangling is fine: only readlink is used
    if (opts.maps !== undefined) fs.writeFileSync(path.join(dir, 'maps'), opts.maps);
    return dir;
  }

  it('lists the Python processes with torch loaded, or with a probe listening, sorted by pid', () => {
    const live = process.ppid; // a process that exists, for the probe socket check
    fakeProcess(300, { cmdline: ['/home/ana/proj/.venv/bin/python', 'train.py', '--moe'], exe: '/opt/python/3.12.7/bin/python3.12', maps: MAPS_STATIC_312_TORCH });
    fakeProcess(120, { cmdline: ['python3', '-m', 'server'], exe: '/usr/bin/python3.11', maps: MAPS_LIBPYTHON });
    fakeProcess(live, { cmdline: ['python3', 'notebook.py'], exe: '/usr/bin/python3.11', maps: MAPS_LIBPYTHON });
    fakeProcess(130, { cmdline: ['bash', '-c', 'python train.py'], exe: '/usr/bin/bash', maps: `${MAPS_BASH}${MAPS_STATIC_312_TORCH.split('\n').slice(3).join('\n')}` });
    fakeProcess(140, { cmdline: ['/usr/bin/python3.12', 'x.py'], exe: '/usr/bin/python3.12' }); // maps unreadable: no torch known
    fakeProcess(150, { exe: '/usr/bin/python3.12', maps: MAPS_STATIC_312_TORCH }); // vanished: no cmdline
    fakeProcess(160, { cmdline: ['/usr/bin/python3.12', 'no-exe-link.py'], maps: MAPS_STATIC_312_TORCH }); // exe from cmdline[0]
    // No torch, but ONNX Runtime: listed too, named by its framework.
    const ortLine = '7f3a20000000-7f3a20100000 r-xp 00000000 fd:01 77 /srv/venv/lib/python3.11/site-packages/onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so\n';
    fakeProcess(170, { cmdline: ['python3', 'serve_onnx.py'], exe: '/usr/bin/python3.11', maps: MAPS_LIBPYTHON + ortLine });
    fakeProcess(process.pid, { cmdline: ['python3.12'], exe: '/usr/bin/python3.12', maps: MAPS_STATIC_312_TORCH }); // the host itself
    fakeProcess('self', { cmdline: ['python3.12'], exe: '/usr/bin/python3.12', maps: MAPS_STATIC_312_TORCH });
    fs.mkdirSync(path.join(proc, 'sys'));
    fs.writeFileSync(path.join(proc, 'uptime'), '1.0 2.0\n');
    fs.writeFileSync(path.join(sockets, `probe-${live}.sock`), '');
    fs.writeFileSync(path.join(sockets, 'probe-4194305.sock'), ''); // over pid_max: its process is gone
    fs.writeFileSync(path.join(sockets, 'probe-4194305.status.json'), '{}');
    fs.writeFileSync(path.join(sockets, 'unrelated.txt'), '');

    const list = listTorchProcesses(new Set([300]), proc);
    expect(list.map((p) => p.pid)).toEqual([160, 170, 300, live].sort((a, b) => a - b));
    const byPid = new Map(list.map((p) => [p.pid, p]));
    expect(byPid.get(300)).toEqual({
      pid: 300, cmdline: '/home/ana/proj/.venv/bin/python train.py --moe', python: '3.12', torch: true, frameworks: ['torch'], probe: false, attached: true,
    });
    expect(byPid.get(live)).toEqual({ pid: live, cmdline: 'python3 notebook.py', python: '3.11', torch: false, frameworks: [], probe: true, attached: false });
    expect(byPid.get(170)).toMatchObject({ python: '3.11', torch: false, frameworks: ['onnxruntime'] });
    expect(byPid.get(160)).toMatchObject({ python: '3.12', torch: true, attached: false });
    // Stale probe files of dead processes are cleaned up; others are left alone.
    expect(fs.readdirSync(sockets).sort()).toEqual([`probe-${live}.sock`, 'unrelated.txt']);
  });

  it('truncates long command lines for display', () => {
    fakeProcess(200, { cmdline: ['python3.12', 'train.py', ...Array.from({ length: 100 }, (_, i) => `--arg${i}=value`)], exe: '/usr/bin/python3.12', maps: MAPS_STATIC_312_TORCH });
    const [info] = listTorchProcesses(new Set(), proc);
    expect(info.cmdline).toHaveLength(300);
    expect(info.cmdline.endsWith('...')).toBe(true);
    expect(info.cmdline.startsWith('python3.12 train.py --arg0=value')).toBe(true);
  });

  it('skips processes of other users', () => {
    if (process.getuid?.() !== 0) return; // only root can make a directory owned by someone else
    const dir = fakeProcess(210, { cmdline: ['python3.12'], exe: '/usr/bin/python3.12', maps: MAPS_STATIC_312_TORCH });
    fakeProcess(211, { cmdline: ['python3.12'], exe: '/usr/bin/python3.12', maps: MAPS_STATIC_312_TORCH });
    fs.chownSync(dir, 12345, 12345);
    expect(readProcessFacts(210, proc)?.uid).toBe(12345);
    expect(listTorchProcesses(new Set(), proc).map((p) => p.pid)).toEqual([211]);
  });

  it('returns an empty list for an empty /proc', () => {
    expect(listTorchProcesses(new Set(), proc)).toEqual([]);
  });
});

describe('readProcessFacts', () => {
  it('reads this very process from the real /proc (Linux)', () => {
    if (process.platform !== 'linux') return;
    const facts = readProcessFacts(process.pid);
    expect(facts).not.toBeNull();
    expect(facts!.uid).toBe(process.getuid!());
    expect(facts!.exe).toBe(fs.realpathSync(process.execPath));
    expect(facts!.images.length).toBeGreaterThan(0);
    expect(isPython(facts!.exe, facts!.images)).toBe(false);
  });

  it('returns null for a process that does not exist', () => {
    expect(readProcessFacts(4194305)).toBeNull();
  });
});
