"""Finding Python's C API in a running process: ELF symbols and where their image is mapped.

The interpreter lives either in a shared libpython (pyenv and most distributions'
--enable-shared builds) or in the python executable itself (Debian's and Ubuntu's
/usr/bin/python3.X, conda, uv's python-build-standalone). Either way the functions
the injector calls are exported as dynamic symbols, because extension modules
link against them. This module reads them from the file on disk and turns them
into addresses in the target with the load bias seen in /proc/PID/maps.
"""

import mmap
import os
import struct
from collections import namedtuple

# Plain namedtuples and no typing/re imports: the injector runs in a fresh interpreter
# on every attach, where each imported module costs milliseconds of the user's wait.

SHT_SYMTAB, SHT_DYNSYM = 2, 11
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_GNU_HASH = 0, 4, 5, 6, 10, 0x6FFFFEF5
STT_FUNC, STT_GNU_IFUNC = 2, 10
SHN_UNDEF = 0


class ElfError(Exception):
    """The file is not an ELF image this injector can read."""


Mapping = namedtuple("Mapping", "start end perms offset path")  # one line of /proc/PID/maps
Segment = namedtuple("Segment", "offset vaddr filesz memsz align")  # one PT_LOAD program header


class ElfImage:
    """The parts of a 64-bit little-endian ELF file needed to look up defined function symbols."""

    def __init__(self, data):
        if data[:4] != b"\x7fELF":
            raise ElfError("not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ElfError("not a 64-bit little-endian ELF file")
        self.data = data
        (self.type, self.machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, _shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        self.segments = []  # PT_LOAD segments
        self.dynamic = None  # (offset, size) of PT_DYNAMIC
        for i in range(phnum):
            p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_align = struct.unpack_from(
                "<IIQQQQQQ", data, phoff + i * phentsize)
            if p_type == PT_LOAD:
                self.segments.append(Segment(p_offset, p_vaddr, p_filesz, p_memsz, max(p_align, 1)))
            elif p_type == PT_DYNAMIC:
                self.dynamic = (p_offset, p_filesz)
        self.sections = []
        if shoff and shnum and shoff + shnum * shentsize <= len(data):
            for i in range(shnum):
                (_name, sh_type, _shflags, _addr, sh_offset, sh_size, sh_link, _info, _align,
                 sh_entsize) = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                self.sections.append((sh_type, sh_offset, sh_size, sh_link, sh_entsize))

    # -- symbol tables -------------------------------------------------------------
    def _symbol_tables(self):
        """(symbols offset, count, strings offset, strings size) for .dynsym, then .symtab, from
        the section headers; from the dynamic segment when the section headers were stripped."""
        tables = []
        for wanted in (SHT_DYNSYM, SHT_SYMTAB):
            for sh_type, offset, size, link, entsize in self.sections:
                if sh_type == wanted and link < len(self.sections):
                    _t, str_offset, str_size, _l, _e = self.sections[link]
                    tables.append((offset, size // (entsize or 24), str_offset, str_size))
        if not tables and self.dynamic:
            found = self._dynamic_symbol_table()
            if found:
                tables.append(found)
        return tables

    def _dynamic_symbol_table(self):
        entries = {}
        offset, size = self.dynamic
        for i in range(size // 16):
            tag, value = struct.unpack_from("<qQ", self.data, offset + 16 * i)
            if tag == DT_NULL:
                break
            entries.setdefault(tag, value)
        if DT_SYMTAB not in entries or DT_STRTAB not in entries:
            return None
        symtab = self.file_offset(entries[DT_SYMTAB])
        strtab = self.file_offset(entries[DT_STRTAB])
        if symtab is None or strtab is None:
            return None
        count = None
        if DT_HASH in entries:
            hash_offset = self.file_offset(entries[DT_HASH])
            if hash_offset is not None:
                count = struct.unpack_from("<II", self.data, hash_offset)[1]  # nchain
        if count is None and DT_GNU_HASH in entries:
            gnu = self.file_offset(entries[DT_GNU_HASH])
            if gnu is not None:
                count = self._gnu_hash_symbol_count(gnu)
        if count is None:
            return None
        return symtab, count, strtab, entries.get(DT_STRSZ, len(self.data) - strtab)

    def _gnu_hash_symbol_count(self, offset):
        """Symbols in .dynsym, from a GNU hash table: one past the last index its chains reach."""
        nbuckets, symoffset, bloom_size, _shift = struct.unpack_from("<IIII", self.data, offset)
        buckets_at = offset + 16 + 8 * bloom_size
        buckets = struct.unpack_from("<%dI" % nbuckets, self.data, buckets_at)
        last = max(buckets) if buckets else 0
        if last < symoffset:
            return symoffset
        chains_at = buckets_at + 4 * nbuckets
        while True:
            value = struct.unpack_from("<I", self.data, chains_at + 4 * (last - symoffset))[0]
            if value & 1:
                return last + 1
            last += 1

    def file_offset(self, vaddr):
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        return None

    def function_symbols(self, names):
        """{name: st_value} for the defined function symbols among names.

        Names are found in the string table first and symbols matched by their name
        offset, so the (often tens of thousands of) other symbols are never decoded.
        """
        found = {}
        for sym_offset, count, str_offset, str_size in self._symbol_tables():
            offsets = {}  # st_name -> name; a name may also end a longer string (suffix sharing)
            for name in names:
                needle = name.encode("ascii") + b"\0"
                at = self.data.find(needle, str_offset, str_offset + str_size)
                while at >= 0:
                    offsets[at - str_offset] = name
                    at = self.data.find(needle, at + 1, str_offset + str_size)
            if not offsets:
                continue
            table = self.data[sym_offset:sym_offset + 24 * count]
            for st_name, st_info, _other, st_shndx, st_value, _size in struct.iter_unpack("<IBBHQQ", table):
                name = offsets.get(st_name)
                if name is None or name in found:
                    continue
                if st_shndx != SHN_UNDEF and st_value and (st_info & 0xF) in (STT_FUNC, STT_GNU_IFUNC):
                    found[name] = st_value
            if len(found) == len(set(names)):
                break
        return found

    def load_bias(self, mappings):
        """Where the file was loaded: the difference between run-time and link-time addresses.

        The lowest-offset mapping of the file corresponds to the PT_LOAD segment that
        contains its file offset; both are page-aligned in the same way by the loader.
        """
        first = min(mappings, key=lambda m: m.offset)
        for seg in self.segments:
            page = seg.align if seg.align > 1 else 4096
            seg_file_start = seg.offset - seg.offset % page
            if seg_file_start <= first.offset < seg.offset + seg.filesz:
                seg_vaddr_start = seg.vaddr - seg.vaddr % page
                return first.start - (seg_vaddr_start + (first.offset - seg_file_start))
        raise ElfError("no loadable segment of the file covers its mapping at offset %#x" % first.offset)


def parse_maps(text):
    """[Mapping] from the text of /proc/PID/maps ("start-end perms offset dev inode   path")."""
    out = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5 or "-" not in fields[0]:
            continue
        start, end = fields[0].split("-", 1)
        path = fields[5] if len(fields) > 5 else ""
        out.append(Mapping(int(start, 16), int(end, 16), fields[1], int(fields[2], 16), path))
    return out


PYTHON_FUNCTIONS = ("Py_AddPendingCall", "PyRun_SimpleString")

# image: path of the file that holds the interpreter; addresses: {name: run-time address}
PythonApi = namedtuple("PythonApi", "image addresses")


def is_libpython(path):
    name = os.path.basename(path)
    return name.startswith("libpython") and ".so" in name


def candidate_images(mappings, exe):
    """Files that may hold the interpreter, most likely first: libpython, the executable, the rest."""
    paths = []
    for m in mappings:
        if m.path.startswith("/") and m.path not in paths:
            paths.append(m.path)
    first = [p for p in paths if is_libpython(p)]
    exe_first = [p for p in paths if p == exe and p not in first]
    rest = [p for p in paths if p not in first and p not in exe_first and "python" in os.path.basename(p).lower()]
    return first + exe_first + rest


def find_python_api(pid, maps_text=None, exe=None, read_file=None, machine=None):
    """Run-time addresses of Py_AddPendingCall and PyRun_SimpleString in process pid.

    Files are read through /proc/PID/root so a job in another mount namespace (a
    container) is read as it sees its own files.
    """
    if maps_text is None:
        with open("/proc/%d/maps" % pid) as f:
            maps_text = f.read()
    if exe is None:
        try:
            exe = os.readlink("/proc/%d/exe" % pid)
        except OSError:
            exe = ""
    mappings = parse_maps(maps_text)
    read_file = read_file or (lambda path: _read_target_file(pid, path))
    reasons = []
    for path in candidate_images(mappings, exe):
        if path.endswith(" (deleted)"):
            reasons.append("%s was deleted or replaced on disk after the job started" % path[:-10])
            continue
        try:
            image = ElfImage(read_file(path))
        except (OSError, ElfError, struct.error) as exc:
            reasons.append("%s: %s" % (path, exc))
            continue
        if machine is not None and image.machine != machine:
            reasons.append("%s is built for another CPU (ELF machine %d)" % (path, image.machine))
            continue
        symbols = image.function_symbols(PYTHON_FUNCTIONS)
        if len(symbols) != len(PYTHON_FUNCTIONS):
            continue
        own = [m for m in mappings if m.path == path]
        bias = image.load_bias(own)
        addresses = {name: bias + value for name, value in symbols.items()}
        for name, address in addresses.items():
            if not any(m.start <= address < m.end and "x" in m.perms for m in own):
                raise ElfError("%s of %s resolves to %#x, outside its executable mappings" % (name, path, address))
        return PythonApi(path, addresses)
    detail = ("; ".join(reasons)) if reasons else "no mapped file exports them"
    raise ElfError("Py_AddPendingCall and PyRun_SimpleString were not found in process %d (%s)" % (pid, detail))


def _read_target_file(pid, path):
    """The file mapped read-only (libpython is tens of MB; only its headers and symbols are read)."""
    last = None
    for candidate in ("/proc/%d/root%s" % (pid, path), path):
        try:
            with open(candidate, "rb") as f:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            last = exc
    raise last
