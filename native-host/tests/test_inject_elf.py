"""Finding Py_AddPendingCall and PyRun_SimpleString in a running process (moe_inject.elf).

Checked against the addresses the process itself resolves with dlsym, for every Python
build on the machine: shared libpython (pyenv, the project's venv) and a static, non-PIE
executable (Debian's /usr/bin/python3.X), plus ELF files with their section headers
stripped (read through the dynamic segment instead).
"""

import glob
import json
import os
import re
import struct
import subprocess
import sys

import pytest

from moe_inject import elf

HERE = os.path.dirname(os.path.abspath(__file__))

DLSYM = (
    "import ctypes, json, sys\n"
    "lib = ctypes.CDLL(None)\n"
    "print(json.dumps({n: ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in ('Py_AddPendingCall', 'PyRun_SimpleString')}), flush=True)\n"
    "sys.stdin.read()\n"
)


def interpreters():
    """Every distinct Python binary here: the running one, pyenv's, the system's (static)."""
    found = [sys.executable]
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-9]*/bin/python3.[0-9]*")))
    found += sorted(glob.glob("/usr/bin/python3.[0-9]*"))
    out, seen = [], set()
    for path in found:
        if not re.match(r"^python3(\.\d+)?$", os.path.basename(path)) or not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)
    return out


@pytest.mark.parametrize("python", interpreters())
def test_symbols_match_what_the_process_resolves_itself(python):
    child = subprocess.Popen([python, "-I", "-S", "-c", DLSYM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        expected = json.loads(child.stdout.readline())
        api = elf.find_python_api(child.pid)
        assert api.addresses == expected
        linked = [m for m in elf.parse_maps(open("/proc/%d/maps" % child.pid).read()) if m.path == api.image]
        assert linked, "the image named must be mapped in the process"
    finally:
        child.stdin.close()
        child.wait(10)


def started(python):
    """A child running python that has finished starting (it said so), waiting on stdin."""
    child = subprocess.Popen([python, "-I", "-S", "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_each_build_is_read_from_the_right_image():
    """A shared build from its libpython, a static one (Debian's /usr/bin/python3.X, which the
    CI machine has through lldb's dependencies) from the executable itself."""
    kinds = set()
    for python in interpreters():
        child = started(python)
        try:
            image = elf.find_python_api(child.pid).image
            maps = open("/proc/%d/maps" % child.pid).read()
        finally:
            child.stdin.close()
            child.wait(10)
        shared = "/libpython" in maps
        assert elf.is_libpython(image) == shared
        if not shared:
            assert os.path.realpath(image) == os.path.realpath(python)
        kinds.add("shared" if shared else "static")
    assert "shared" in kinds
    if any(re.match(r"^/usr/bin/python3\.\d+$", p) for p in interpreters()):
        assert "static" in kinds


def _strip_section_headers(data):
    out = bytearray(data)
    struct.pack_into("<Q", out, 0x28, 0)  # e_shoff
    struct.pack_into("<H", out, 0x3C, 0)  # e_shnum
    return bytes(out)


@pytest.mark.parametrize("python", interpreters()[:1] + [p for p in interpreters() if p.startswith("/usr/bin/")][:1])
def test_reads_dynamic_symbols_without_section_headers(python):
    child = started(python)
    try:
        image_path = elf.find_python_api(child.pid).image
    finally:
        child.stdin.close()
        child.wait(10)
    with open(image_path, "rb") as f:
        data = f.read()
    full = elf.ElfImage(data).function_symbols(elf.PYTHON_FUNCTIONS)
    stripped = elf.ElfImage(_strip_section_headers(data))
    assert stripped.sections == []
    assert stripped.function_symbols(elf.PYTHON_FUNCTIONS) == full
    assert len(full) == 2


def test_maps_parsing_keeps_paths_with_spaces_and_marks_deleted_files():
    text = ("7f0000000000-7f0000001000 r-xp 00000000 08:01 42    /opt/my python/lib/libpython3.11.so.1.0\n"
            "7f0000001000-7f0000002000 r--p 00001000 08:01 43    /usr/lib/libx.so (deleted)\n"
            "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0     [stack]\n"
            "7ffd00022000-7ffd00023000 r--p 00000000 00:00 0\n")
    maps = elf.parse_maps(text)
    assert [m.path for m in maps] == ["/opt/my python/lib/libpython3.11.so.1.0", "/usr/lib/libx.so (deleted)", "[stack]", ""]
    assert maps[0].start == 0x7F0000000000 and maps[0].perms == "r-xp" and maps[1].offset == 0x1000
    assert elf.candidate_images(maps, "/usr/bin/python3") == ["/opt/my python/lib/libpython3.11.so.1.0"]


def test_a_process_without_python_says_so():
    child = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(elf.ElfError) as err:
            elf.find_python_api(child.pid)
        assert "Py_AddPendingCall and PyRun_SimpleString were not found in process %d" % child.pid in str(err.value)
    finally:
        child.kill()
        child.wait()


def test_rejects_what_is_not_a_64_bit_little_endian_elf():
    with pytest.raises(elf.ElfError):
        elf.ElfImage(b"#!/bin/sh\n" + bytes(100))
    header = bytearray(b"\x7fELF" + bytes(60))
    header[4], header[5] = 1, 1  # 32-bit
    with pytest.raises(elf.ElfError):
        elf.ElfImage(bytes(header))
