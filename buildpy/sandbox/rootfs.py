"""The container's filesystem: the root (overlay or the given directory), mount points, pivot_root,
/proc, a minimal /dev, /sys, the RUN mounts and Docker's masked and read-only paths.

Two halves, run by the two processes of the child (see child.py):

- `prepare_root` (in the child's mount namespace, before the init forks): mounts the overlay on the
  rootfs and makes the mount points the rootfs lacks. With an overlay they go to a *stub layer*, an
  extra topmost lower dir holding only the missing entries (under copies of their existing parent
  dirs: same mode, owner, times), cached in the parent's temp dir, so nothing of them reaches the
  upper dir, i.e. the layer. Without an overlay they are made in the rootfs itself and
  `remove_stubs` takes them away after the step (empty ones only, parents' times restored), as
  BuildKit's stub cleaner does.
- `enter_root` (in the init, inside the new pid namespace and a mount namespace of its own):
  detaches host sources with open_tree, pivot_roots, and mounts everything else; paths inside the
  container are resolved by the kernel inside the new root from then on, so a hostile image's
  symlinks cannot point a mount at the host.

Mount points are found by `resolve`, which follows symlinks as if the rootfs were `/`.
"""

from __future__ import annotations

import os
import stat

from buildpy.sandbox import syscalls as sc

# Docker's defaults (moby daemon/pkg/oci/defaults.go); thermal_throttle paths are added per CPU.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
                "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
SYSTEM_DIRS = ("/proc", "/dev", "/sys")
_MAX_SYMLINKS = 40


class MountError(Exception):
    """A mount the user asked for cannot be made (bad target, missing source): one line."""

    user_facing = True


class Resolved:
    """Where a mount target lands: `existing`, the canonical path (no symlinks, from the root,
    starting with /) of its deepest existing entry; `sources`, for each component of `existing`,
    the host path of its topmost copy among the layers; `missing`, the components below it."""

    __slots__ = ("existing", "sources", "missing")

    def __init__(self, existing: str, sources: list[str], missing: list[str]) -> None:
        self.existing = existing
        self.sources = sources
        self.missing = missing


def _is_whiteout(path: str, st: os.stat_result) -> bool:
    """A 0:0 character device, or (overlayfs >= 6.7) an empty file with an overlay.whiteout xattr."""
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        try:
            os.getxattr(path, "user.overlay.whiteout", follow_symlinks=False)
            return True
        except OSError:
            return False
    return False


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "user.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lookup(stack: list[str], name: str, overlay: bool) -> tuple[os.stat_result | None, list[str]]:
    """The entry `name` of the merged dir whose copies are `stack` (topmost layer first), as
    overlayfs merges it: (stat of its topmost copy, or None when absent or whited out; the copies
    that make it up, topmost first: several only for a dir)."""
    found: list[str] = []
    top = None
    for layer_dir in stack:
        path = layer_dir + "/" + name
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if overlay and _is_whiteout(path, st):
            break
        if top is None:
            top = st
        elif not stat.S_ISDIR(st.st_mode):
            break  # a non-dir below a dir is hidden, and hides what is below it
        found.append(path)
        if not stat.S_ISDIR(st.st_mode) or (overlay and _is_opaque(path)):
            break
    return top, found


def resolve(layers: list[str], target: str, overlay: bool = True) -> Resolved:
    """Resolve `target` in the merged view of `layers` (topmost first; one for a plain rootfs)
    without mounting it: symlinks followed as the kernel would after chroot, whiteouts and opaque
    dirs honoured as overlayfs (userxattr) does."""
    todo = [p for p in target.split("/") if p and p != "."]
    done: list[tuple[str, list[str]]] = []  # (component, its copies), each an existing dir
    hops = 0
    if overlay:  # an opaque layer root hides the layers below it
        for i, layer in enumerate(layers):
            if _is_opaque(layer):
                layers = layers[:i + 1]
                break
    while todo:
        comp = todo.pop(0)
        if comp == "..":
            if done:
                done.pop()
            continue
        stack = done[-1][1] if done else layers
        st, copies = _lookup(stack, comp, overlay)
        if st is None:
            missing = [comp] + todo
            if ".." in missing:
                raise MountError(f"mount target {target}: cannot create a path through '..'")
            return Resolved("/" + "/".join(c for c, _ in done), [c[0] for _, c in done], missing)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise MountError(f"mount target {target}: too many levels of symbolic links")
            link = os.readlink(copies[0])
            if link.startswith("/"):
                done = []
            todo = [p for p in link.split("/") if p and p != "."] + todo
            continue
        done.append((comp, copies))
        if not stat.S_ISDIR(st.st_mode) and todo:
            raise MountError(f"mount target {target}: /{'/'.join(c for c, _ in done)} is not a directory")
    return Resolved("/" + "/".join(c for c, _ in done), [c[0] for _, c in done], [])


def _copy_dir_meta(src: str, dst: str) -> None:
    """Give `dst` the mode, owner and extended attributes of `src` (times come last, after its
    children are made). Overlay's own xattrs are not copied: they would change the merge."""
    st = os.lstat(src)
    try:
        os.chown(dst, st.st_uid, st.st_gid)
    except OSError:
        pass  # an id this namespace does not map: the stub stays root's
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        names = []
    for name in names:
        if name.startswith(("trusted.", "user.overlay.")):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass


def _make(path: str, is_dir: bool) -> None:
    if is_dir:
        os.mkdir(path, 0o755)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))


def make_stub_layer(stubs: str, wanted: list[tuple[Resolved, bool]]) -> None:
    """Fill the empty dir `stubs` with the missing mount points of `wanted` ((where, is_dir)),
    under copies of their existing parent dirs (which the stub layer shadows in the merge)."""
    times: dict[str, tuple[int, int]] = {}
    for where, is_dir in wanted:
        path = ""
        for comp, source in zip(where.existing.strip("/").split("/") if where.existing != "/" else [],
                                where.sources):
            path += "/" + comp
            if path not in times:
                os.mkdir(stubs + path)
                _copy_dir_meta(source, stubs + path)
                st = os.lstat(source)
                times[path] = (st.st_atime_ns, st.st_mtime_ns)
        for i, comp in enumerate(where.missing):
            path += "/" + comp
            if not os.path.lexists(stubs + path):
                _make(stubs + path, is_dir or i < len(where.missing) - 1)
    for path in sorted(times, key=len, reverse=True):
        os.utime(stubs + path, ns=times[path], follow_symlinks=False)


def make_stubs_in_place(root: str, wanted: list[tuple[Resolved, bool]]) -> list[tuple[str, ...]]:
    """Create the mount points in `root` itself; returns what `remove_stubs` needs: for each
    target, (parent, atime_ns, mtime_ns, created paths...) with paths relative to `root`."""
    made: list[tuple[str, ...]] = []
    for where, is_dir in wanted:
        parent = where.existing
        st = os.lstat(root + parent)
        path = parent.rstrip("/")
        created: list[str] = []
        for i, comp in enumerate(where.missing):
            path += "/" + comp
            if not os.path.lexists(root + path):
                _make(root + path, is_dir or i < len(where.missing) - 1)
                created.append(path)
        if created:
            made.append((parent, str(st.st_atime_ns), str(st.st_mtime_ns), *created))
    return made


def _open_dir_nofollow(root: str, path: str) -> int:
    """An fd of the directory `path` under `root`, refusing any symlink on the way (the step ran
    in between and may have planted one)."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for comp in [p for p in path.split("/") if p]:
        try:
            nfd = os.open(comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nfd
    return fd


def remove_stubs(root: str, made: list[tuple[str, ...]]) -> None:
    """Undo `make_stubs_in_place`: remove the mount points still empty, deepest first, and give
    their parents back their times."""
    for parent, atime, mtime, *created in reversed(made):
        for path in reversed(created):
            head, _, name = path.rpartition("/")
            try:
                dfd = _open_dir_nofollow(root, head)
            except OSError:
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=dfd)
                elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(name, dir_fd=dfd)
            except OSError:
                pass  # not empty, or gone: the step's doing, left as it is
            finally:
                os.close(dfd)
        try:
            dfd = _open_dir_nofollow(root, parent)
            try:
                os.utime(f"/proc/self/fd/{dfd}", ns=(int(atime), int(mtime)))
            finally:
                os.close(dfd)
        except OSError:
            pass


def mount_overlay(target: str, lowers: list[str], upper: str, work: str, volatile: bool = False) -> None:
    """overlayfs on `target`. Paths are passed relative to their common parent (the mount data is
    one page: dozens of absolute snapshot paths would not fit), and `userxattr` because a user
    namespace may not write trusted.* xattrs: opaque dirs carry user.overlay.opaque. `volatile`:
    no syncs (see spec.Overlay)."""
    paths = lowers + [upper, work]
    for p in paths:
        if any(c in p for c in ",:\\"):
            raise OSError(22, f"overlay path contains ',', ':' or '\\': {p}")
    base = os.path.commonpath(paths)
    rel = [os.path.relpath(p, base) for p in paths]
    data = f"lowerdir={':'.join(rel[:-2])},upperdir={rel[-2]},workdir={rel[-1]},userxattr"
    if volatile:
        data += ",volatile"
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(base)
        sc.mount("overlay", target, "overlay", 0, data)
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def prepare_root(spec: dict) -> list[tuple[str, ...]]:
    """Mount the root (overlay or a bind of the rootfs) with every mount point it needs; returns
    the in-place stubs `remove_stubs` must take away afterwards (none with an overlay)."""
    root = spec["rootfs"]
    # Nothing we mount may propagate back to the host's mount namespace.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
    ov = spec["overlay"]
    if ov is None:
        wanted = [(resolve([root], t, overlay=False), is_dir) for t, is_dir in _stub_targets(spec)]
        made = make_stubs_in_place(root, [w for w in wanted if w[0].missing])
        sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)  # pivot_root wants a mount point
        return made
    # The upper dir is fresh, so the lowers alone say what exists.
    lowers = list(ov["lowers"])
    wanted = [(resolve(lowers, t), is_dir) for t, is_dir in _stub_targets(spec)]
    wanted = [w for w in wanted if w[0].missing]
    if wanted:
        lowers.insert(0, _stub_link(_stub_layer(spec["cache"], lowers, wanted), ov["upper"]))
    mount_overlay(root, lowers, ov["upper"], ov["work"], ov["volatile"])
    return []


def _stub_link(stubs: str, upper: str) -> str:
    """A symlink to the stub layer beside the upper dir (overlay follows it at mount time), so that
    every overlay path shares the upper dir's parent and the mount options stay short even for
    hundreds of (short-linked) lowers; the stub layer itself lives in the per-process cache."""
    link = os.path.join(os.path.dirname(upper), ".stubs")
    try:
        if os.readlink(link) == stubs:
            return link
        os.unlink(link)
    except FileNotFoundError:
        pass
    except OSError:
        return stubs  # not ours to replace: mount with the long path
    try:
        os.symlink(stubs, link)
    except OSError:
        return stubs
    return link


def _stub_layer(cache: str, lowers: list[str], wanted: list[tuple[Resolved, bool]]) -> str:
    """The stub layer for these lowers and mount points, made once per parent process: snapshots
    do not change, and runs only read it (a lower dir)."""
    import hashlib

    ident: list[object] = []
    for p in lowers:
        st = os.stat(p)
        ident.append((p, st.st_dev, st.st_ino, st.st_mtime_ns))
    ident += [(w.existing, w.missing, is_dir) for w, is_dir in wanted]
    path = f"{cache}/stubs-{hashlib.sha256(repr(ident).encode()).hexdigest()[:32]}"
    if not os.path.isdir(path):
        tmp = f"{path}.{os.getpid()}"
        os.mkdir(tmp, 0o755)
        make_stub_layer(tmp, wanted)
        try:
            os.rename(tmp, path)
        except OSError:  # another run made it meanwhile
            remove_tree(tmp)
    return path


def remove_tree(path: str) -> None:
    """Remove a stub layer: only dirs and empty files, no symlinks to follow."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def _ordered_mounts(spec: dict) -> list[dict]:
    """RUN mounts in the order they are applied: shallow targets first, as Docker sorts them."""
    return sorted(spec["mounts"], key=lambda m: len([p for p in m["target"].split("/") if p]))


def _nested(target: str, earlier: list[str]) -> bool:
    return any(target.startswith(e.rstrip("/") + "/") for e in earlier)


def _stub_targets(spec: dict) -> list[tuple[str, bool]]:
    """Mount targets that live in the rootfs proper (not inside another mount), with whether
    each is a directory."""
    out = [(d, True) for d in SYSTEM_DIRS]
    earlier = list(SYSTEM_DIRS)
    for m in _ordered_mounts(spec):
        target = os.path.normpath("/" + m["target"])
        if not _nested(target, earlier):
            out.append((target, _is_dir_mount(m)))
        earlier.append(target)
    return out


def _is_dir_mount(m: dict) -> bool:
    if m["type"] == "tmpfs":
        return True
    if m["type"] == "file":
        return False
    try:
        return stat.S_ISDIR(os.stat(m["source"]).st_mode)
    except OSError as e:
        raise MountError(f"mount source {m['source']}: {e.strerror}") from None


def _detach(source: str, readonly: bool, recursive: bool = True, extra: int = 0) -> int:
    """A detached copy of the mount tree at host path `source`, read-only when asked."""
    flags = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | (sc.AT_RECURSIVE if recursive else 0)
    fd = sc.open_tree(source, flags)
    attrs = (sc.MOUNT_ATTR_RDONLY if readonly else 0) | extra
    if attrs:
        sc.mount_setattr_fd(fd, attrs, recursive)
    return fd


def _make_target(path: str, is_dir: bool) -> None:
    """A mount point inside the new root (already pivoted: symlinks resolve inside it)."""
    if is_dir:
        os.makedirs(path, 0o755, exist_ok=True)
    elif not os.path.lexists(path):
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def enter_root(spec: dict) -> None:
    """In the init (new pid namespace, own mount namespace): pivot_root into the prepared root and
    mount /proc, /dev, /sys, the RUN mounts, then mask what Docker masks."""
    root = spec["rootfs"]
    private_net = spec["network"] == "none"
    # Host sources first, while the host's tree is still reachable.
    devices = [(name, _detach(f"/dev/{name}", False, recursive=False))
               for name in DEVICES if os.path.exists(f"/dev/{name}")]
    sys_fd = None
    if not private_net:
        # sysfs may only be mounted afresh by the owner of the network namespace: bind the host's.
        sys_fd = _detach("/sys", True,
                         extra=sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC)
    mounts = _ordered_mounts(spec)
    sources: list[int | None] = []
    for m in mounts:
        if m["type"] in ("bind", "file"):
            try:
                sources.append(_detach(m["source"], m["readonly"]))
            except FileNotFoundError:
                raise MountError(f"mount source {m['source']}: no such file or directory") from None
        else:
            sources.append(None)

    # proc and sysfs only mount in a user namespace while the host's are visible in the mount
    # namespace (the kernel's mount_too_revealing check): before pivot_root, on targets opened
    # inside the root so no symlink leads elsewhere.
    nosuid_nodev_noexec = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    _mount_in_root(root, "proc", "proc", nosuid_nodev_noexec)
    if sys_fd is None:
        _mount_in_root(root, "sys", "sysfs", nosuid_nodev_noexec | sc.MS_RDONLY)

    _pivot(root)

    sc.mount("tmpfs", "/dev", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name, fd in devices:
        _make_target(f"/dev/{name}", False)
        sc.move_mount_fd(fd, f"/dev/{name}")
        os.close(fd)
    os.mkdir("/dev/pts", 0o755)
    sc.mount("devpts", "/dev/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620" + (",gid=5" if spec["gid5"] else ""))
    os.mkdir("/dev/shm", 0o1777)
    sc.mount("shm", "/dev/shm", "tmpfs", nosuid_nodev_noexec, "mode=1777,size=65536k")
    os.mkdir("/dev/mqueue", 0o755)
    sc.mount("mqueue", "/dev/mqueue", "mqueue", nosuid_nodev_noexec)
    for name, dest in DEV_LINKS:
        os.symlink(dest, f"/dev/{name}")
    if sys_fd is not None:
        sc.move_mount_fd(sys_fd, "/sys")
        os.close(sys_fd)

    for m, fd in zip(mounts, sources):
        target = os.path.normpath("/" + m["target"])
        try:
            _make_target(target, m["type"] == "tmpfs" or (fd is not None and _fd_is_dir(fd)))
            if fd is not None:
                sc.move_mount_fd(fd, target)
                os.close(fd)
            else:
                _mount_tmpfs(target, m)
        except OSError as e:
            raise MountError(f"mount {m['type']} on {target}: {e.strerror}") from None

    if not spec["insecure"]:
        mask_paths()


def _fd_is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def _mount_tmpfs(target: str, m: dict) -> None:
    """A tmpfs: writable unless its options say "ro" (Mount.readonly's default is for binds),
    nosuid and nodev always; other options (size, mode, uid, ...) go to the kernel."""
    flags = sc.MS_NOSUID | sc.MS_NODEV
    data = []
    for opt in m["options"]:
        if opt == "ro":
            flags |= sc.MS_RDONLY
        elif opt == "noexec":
            flags |= sc.MS_NOEXEC
        elif opt in ("rw", "nosuid", "nodev"):
            continue
        else:
            data.append(opt)
    sc.mount("tmpfs", target, "tmpfs", flags, ",".join(data) or None)


def _mount_in_root(root: str, path: str, fstype: str, flags: int) -> None:
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = sc.openat2(rootfd, path, os.O_PATH | os.O_DIRECTORY,
                        sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(rootfd)
    try:
        sc.mount(fstype, f"/proc/self/fd/{fd}", fstype, flags)
    finally:
        os.close(fd)


def _pivot(root: str) -> None:
    """pivot_root(".", ".") as runc does: the old root ends up stacked on the new one, is made
    rslave (so its unmount cannot reach the host) and detached; no directory in the image needed."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_paths() -> None:
    """Docker's masked paths (files under /dev/null, dirs under an empty read-only tmpfs) and
    read-only paths (bind-mounted onto themselves read-only)."""
    masked = list(MASKED_PATHS)
    try:
        cpus = os.listdir("/sys/devices/system/cpu")
    except OSError:
        cpus = []
    masked += [f"/sys/devices/system/cpu/{c}/thermal_throttle" for c in sorted(cpus)
               if c.startswith("cpu") and c[3:].isdigit()]
    for path in masked:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
        else:
            sc.mount("/dev/null", path, None, sc.MS_BIND)
    for path in READONLY_PATHS:
        try:
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        except FileNotFoundError:
            continue
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
                 | sc.MS_NOEXEC)
