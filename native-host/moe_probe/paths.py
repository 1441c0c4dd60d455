"""Where probes put their sockets: one private folder per user.

The host finds running probes by listing this folder, so both sides must agree
on it; the host's copy is native-host/src/paths.ts (held to this by a test).
"""

import os

SOCKET_PREFIX = "probe-"
SOCKET_SUFFIX = ".sock"


def socket_dir():
    override = os.environ.get("MOE_DEVTOOLS_SOCKET_DIR")
    if override:
        return override
    # A fixed place rather than XDG_RUNTIME_DIR or TMPDIR: the job and the
    # browser often run with different environments (ssh vs desktop session).
    return "/tmp/moe-devtools-%d" % os.getuid()


def ensure_socket_dir():
    """Create the folder 0700 and refuse one that another user owns or can read."""
    path = socket_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.getuid():
        raise PermissionError("socket folder %s belongs to uid %d, not us" % (path, st.st_uid))
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def socket_path(pid):
    return os.path.join(socket_dir(), "%s%d%s" % (SOCKET_PREFIX, pid, SOCKET_SUFFIX))


def status_path(pid):
    """Where an injected probe that could not start leaves its reason for the host."""
    return os.path.join(socket_dir(), "%s%d.status.json" % (SOCKET_PREFIX, pid))
