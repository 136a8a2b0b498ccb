"""Landlock (Linux >= 5.13) through raw syscalls via ctypes: filesystem, TCP and signal walls that native code
cannot cross either; landlock_abi() reads the kernel's ABI version, landlock(...) applies a ruleset for good."""
from __future__ import annotations

import ctypes
import os
import stat

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
PR_SET_NO_NEW_PRIVS = 38
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_MAKE_CHAR, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 1 << 6, 1 << 9, 1 << 10, 1 << 11
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (old kernel, disabled, seccomp-filtered)."""
    try:
        abi = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                              ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(abi), 0)


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1                               # ABI 1: EXECUTE .. MAKE_SYM
    rights |= FS_REFER if abi >= 2 else 0
    rights |= FS_TRUNCATE if abi >= 3 else 0
    rights |= FS_IOCTL_DEV if abi >= 5 else 0
    return rights


def landlock(read=(), write=(), devices=(), execute=False, allow_tcp=False) -> int:
    """Restrict this thread and every thread and process it starts afterwards: read (and, with execute,
    run programs) only under `read`, read and write only under `write`, open `devices` read-write; no TCP
    bind/connect unless allow_tcp (ABI >= 4); no signals or abstract sockets beyond this sandbox (ABI >= 6).
    Returns the ABI applied, 0 when the kernel has no Landlock (then nothing changed)."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    libc, handled = _libc(), _handled_fs(abi)
    net = 0 if allow_tcp or abi < 4 else NET_BIND_TCP | NET_CONNECT_TCP
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(handled, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(libc, libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                                        ctypes.c_size_t(size), ctypes.c_uint32(0)), "create_ruleset")
    try:
        reading = FS_READ_FILE | FS_READ_DIR | (FS_EXECUTE if execute else 0)
        writing = handled & ~(FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_MAKE_FIFO | FS_MAKE_SOCK | FS_EXECUTE)
        device = (FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV) & handled
        for paths, rights in ((read, reading), (write, writing), (devices, device)):
            for path in paths:
                _add_rule(libc, ruleset, path, rights)
        _check(libc, libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        _check(libc, libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_rule(libc, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return                                            # a root that does not exist needs no rule
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FS_FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        _check(libc, libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                                  ctypes.byref(rule), ctypes.c_uint32(0)), f"add_rule({path})")
    finally:
        os.close(fd)


def _check(libc, result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock {what}: {os.strerror(err)}")
    return int(result)
