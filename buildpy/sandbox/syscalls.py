"""The Linux system calls the sandbox needs and Python 3.11's `os` lacks, through ctypes: namespaces
(unshare), mounts (mount, umount2, pivot_root, open_tree, move_mount, mount_setattr), openat2,
prctl, capset, sethostname and bringing the loopback interface up.

Imported by the sandbox's child process, whose start-up time is the sandbox's overhead: nothing
here imports more than ctypes and os. Every wrapper raises OSError with the errno and the path.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

# System calls glibc does not wrap. The mount API and openat2 have one number on every
# architecture; pivot_root does not.
_NR_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "s390x": 217,
                  "ppc64le": 203, "ppc64": 203}
_NR_OPEN_TREE = 428
_NR_MOVE_MOUNT = 429
_NR_OPENAT2 = 437
_NR_MOUNT_SETATTR = 442

_libc = ctypes.CDLL(None, use_errno=True)

_mount = _libc.mount
_mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_umount2 = _libc.umount2
_umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_unshare = _libc.unshare
_unshare.argtypes = (ctypes.c_int,)
_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_sethostname = _libc.sethostname
_sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {fstype or ''}".strip(),
           target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_umount2(_b(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _NR_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(_syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root", new_root)


def open_tree(path: str, flags: int, dirfd: int = AT_FDCWD) -> int:
    """A file descriptor for the mount tree at `path`; with OPEN_TREE_CLONE a detached copy that
    survives pivot_root and can be attached later with move_mount."""
    return _check(_syscall(ctypes.c_long(_NR_OPEN_TREE), ctypes.c_int(dirfd), _b(path),
                           ctypes.c_uint(flags)), "open_tree", path)


def move_mount_fd(fd: int, target: str) -> None:
    """Attach the detached mount `fd` at `target` (resolved in the caller's root)."""
    _check(_syscall(ctypes.c_long(_NR_MOVE_MOUNT), ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD),
                    _b(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount", target)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr_fd(fd: int, attr_set: int, recursive: bool = True) -> None:
    """Set mount attributes (e.g. MOUNT_ATTR_RDONLY) on the mount `fd`, and with `recursive` on
    every mount below it: a plain read-only remount would leave submounts writable."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_syscall(ctypes.c_long(_NR_MOUNT_SETATTR), ctypes.c_int(fd), b"", ctypes.c_uint(flags),
                    ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    for _ in range(100):
        fd = _syscall(ctypes.c_long(_NR_OPENAT2), ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
                      ctypes.c_size_t(ctypes.sizeof(how)))
        # EAGAIN: a rename or mount somewhere on the machine raced with a '..' under
        # RESOLVE_IN_ROOT; the kernel asks to try again.
        if fd >= 0 or ctypes.get_errno() != 11:
            break
    return _check(fd, "open", path)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl {option}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks, version 3 of the ABI)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load(bpf: bytes) -> None:
    """Install a classic BPF seccomp program (as libseccomp exports it); no_new_privs must be set."""
    count = len(bpf) // ctypes.sizeof(_SockFilter)
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    _check(_prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_sethostname(raw, len(raw)), "sethostname")


def loopback_up() -> None:
    """Bring `lo` up in this network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS on a socket)."""
    fd = _check(_libc.socket(2, 2 | os.O_CLOEXEC, 0), "socket")  # AF_INET, SOCK_DGRAM
    try:
        ifreq = ctypes.create_string_buffer(40)
        ifreq.value = b"lo"
        _check(_ioctl(fd, 0x8913, ifreq), "SIOCGIFFLAGS lo")
        flags = int.from_bytes(ifreq.raw[16:18], sys.byteorder) | 0x1  # IFF_UP
        ctypes.memmove(ctypes.addressof(ifreq) + 16, flags.to_bytes(2, sys.byteorder), 2)
        _check(_ioctl(fd, 0x8914, ifreq), "SIOCSIFFLAGS lo")
    finally:
        os.close(fd)
