"""What the step's process may do, as Docker's defaults allow: the capability sets cut to Docker's
default list, no_new_privs, and a seccomp filter equivalent to Docker's default profile
(moby/profiles seccomp/default.json, restated here for the capabilities we keep).

The filter is compiled once per parent process with libseccomp (PyPI pyseccomp) to classic BPF and
handed to the child as bytes; the child installs it with prctl, so it never imports pyseccomp.
"""

from __future__ import annotations

import os
import threading

from buildpy.sandbox import syscalls

# Docker's default capabilities (moby daemon/pkg/oci/caps/defaults.go), by number.
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL = 0, 1, 3, 4, 5
CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_NET_RAW = 6, 7, 8, 10, 13
CAP_SYS_CHROOT, CAP_MKNOD, CAP_AUDIT_WRITE, CAP_SETFCAP = 18, 27, 29, 31
DEFAULT_CAPS = (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID, CAP_SETUID,
                CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_SYS_CHROOT, CAP_MKNOD,
                CAP_AUDIT_WRITE, CAP_SETFCAP)
DEFAULT_CAP_MASK = sum(1 << c for c in DEFAULT_CAPS)  # 0xa80425fb, Docker's CapEff for root


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return 63  # dropping a capability the kernel does not know fails harmlessly (EINVAL)


# Read once, when the fork server (or a fresh child) imports this, not in every step.
LAST_CAP = _last_cap()


def drop_capabilities(uid: int, keep: int = DEFAULT_CAP_MASK) -> None:
    """Cut the bounding set to `keep` and clear the ambient set (needs CAP_SETPCAP, so before
    switching user). For root also set effective = permitted = `keep`, inheritable empty (as Docker
    since 20.10.14); a non-root uid loses its capabilities at setuid and execve by itself."""
    for cap in range(LAST_CAP + 1):
        if not keep & (1 << cap):
            try:
                syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
            except OSError as e:
                if e.errno != 22:  # EINVAL: beyond what this kernel knows
                    raise
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    if uid == 0:
        syscalls.capset(keep, keep, 0)


def no_new_privs() -> None:
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)


def load_seccomp(bpf: bytes) -> None:
    syscalls.seccomp_load(bpf)


# Docker's default profile: everything else fails with EPERM.
SECCOMP_ALLOW = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64",
    "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat",
    "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex",
    "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu",
    "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "getxattrat",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
    "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall",
    "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "mseal",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause",
    "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64",
    "recvmsg", "remap_file_pages", "removexattr", "removexattrat", "rename", "renameat", "renameat2",
    "restart_syscall", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg",
    "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
    "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
    "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair",
    "splice", "stat", "stat64", "statfs", "statfs64", "statmount", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
    "unlink", "unlinkat", "uretprobe", "utime", "utimensat", "utimensat_time64", "utimes", "vfork",
    "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
    # kernel >= 4.8 (ptrace can no longer bypass seccomp)
    "process_vm_readv", "process_vm_writev", "ptrace",
    # allowed because CAP_SYS_CHROOT is kept
    "chroot",
)
# Per architecture, as in the profile's "arches" includes.
SECCOMP_ALLOW_ARCH = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
                "cacheflush", "set_tls"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
    "ppc64le": ("sync_file_range2", "swapcontext"),
}
# personality(2) only with these personas: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26,
# and the query 0xffffffff.
SECCOMP_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# clone(2) without any namespace flag (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET).
CLONE_NAMESPACE_FLAGS = 0x7E020000


def seccomp_bpf() -> bytes:
    """The profile compiled for this machine (native architecture plus its 32-bit companions),
    once per process: steps of parallel stages wait for the one compile (~40-70 ms). The result
    is also kept on disk (the user's cache dir, keyed by this module's source and the
    libseccomp library file), so a one-step command such as `buildpy run` does not pay it."""
    global _bpf_cache
    with _bpf_lock:
        if _bpf_cache is None:
            _bpf_cache = _cached_compile()
    return _bpf_cache


def _cached_compile() -> bytes:
    import glob
    import hashlib
    from pathlib import Path

    key = hashlib.sha256()
    with open(__file__, "rb") as f:
        key.update(f.read())
    key.update(os.uname().machine.encode())
    for lib in sorted(glob.glob("/usr/lib/*/libseccomp.so*") + glob.glob("/lib/*/libseccomp.so*")
                      + glob.glob("/usr/lib/libseccomp.so*") + glob.glob("/usr/local/lib/libseccomp.so*")):
        try:
            st = os.stat(lib)
        except OSError:
            continue
        key.update(f"{lib}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "buildpy" / "seccomp"
    path = cache / f"{key.hexdigest()[:32]}.bpf"
    try:
        data = path.read_bytes()
        if data and len(data) % 8 == 0:  # whole sock_filter instructions, else compile anew
            return data
    except OSError:
        pass
    data = _compile()
    try:
        import tempfile

        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache only
    return data


_bpf_cache: bytes | None = None
_bpf_lock = threading.Lock()


def _compile() -> bytes:
    import errno

    import pyseccomp as sc

    machine = os.uname().machine
    f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    # A binary tree instead of a chain of ~400 comparisons: faster per syscall, and the kernel's
    # action cache, computed when the filter is installed, costs a fraction as much.
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    companions = {"x86_64": (sc.Arch.X86, sc.Arch.X32), "aarch64": (sc.Arch.ARM,),
                  "s390x": (sc.Arch.S390,)}.get(machine, ())
    for arch in companions:
        f.add_arch(arch)

    def rule(action: int, name: str, *args: object) -> None:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
            return  # unknown to this libseccomp: stays at the default (EPERM)
        f.add_rule(action, name, *args)

    for name in SECCOMP_ALLOW + SECCOMP_ALLOW_ARCH.get(machine, ()):
        rule(sc.ALLOW, name)
    # socket: every address family but AF_ALG (38) and AF_VSOCK (40).
    rule(sc.ALLOW, "socket", sc.Arg(0, sc.LT, 38))
    rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, 39))
    rule(sc.ALLOW, "socket", sc.Arg(0, sc.GT, 40))
    for persona in SECCOMP_PERSONALITIES:
        rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, persona))
    # clone's flags are its first argument except on s390, where they are the second.
    flags_arg = 1 if machine.startswith("s390") else 0
    rule(sc.ALLOW, "clone", sc.Arg(flags_arg, sc.MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0))
    # clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
    rule(sc.ERRNO(errno.ENOSYS), "clone3")

    fd = os.memfd_create("seccomp-bpf")
    try:
        f.export_bpf(_FdFile(fd))
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


class _FdFile:
    """The one method pyseccomp's export_bpf asks of a file."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd
