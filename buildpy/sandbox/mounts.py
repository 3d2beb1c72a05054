"""RUN `--mount`s made real: each `RunMount` (filled by the executor from the Dockerfile's
flags, with BuildKit's defaults applied) becomes host-side sources and `spec.Mount`s, held for
the step by `resolve`'s context manager and released after it.

- bind: `source` inside `from_dir` (the build context, or a stage's or image's root dir, as the
  caller resolved `from`), symlinks followed inside that root. Read-only unless `rw`; with `rw`
  the step writes to a private copy (reflinked where the file system can) that is thrown away.
- cache: `STORE_ROOT/cache-mounts/<id, or target>/`, kept across steps and builds. `sharing`:
  shared (concurrent users; a shared flock), locked (an exclusive flock held for the step, so
  users run one after another), private (the shared dir when nobody uses it, else a dir of its
  own — `<name>.private-N/`, also kept). `uid`/`gid`/`mode` apply when the dir is made, seeded
  from `from_dir`/`source` when given.
- tmpfs: a tmpfs of `size` bytes (0: the kernel's default).
- secret: the caller's `secrets[id]` in a file of a private 0700 dir on /dev/shm (memory, not
  disk), mode 0400 (or `mode`) owned by `uid`/`gid`, bound read-only at `/run/secrets/ID` or
  `target`, deleted after the step; `env=NAME` exposes it as a variable instead (or as well,
  when `target` is given). Missing: an error when `required`, else no mount.
- ssh: the agent socket `ssh_agents[id]` (default: `$SSH_AUTH_SOCK` as "default") bound at
  `/run/buildkit/ssh_agent.N` or `target`; SSH_AUTH_SOCK names the first. Missing: an error
  when `required`, else no mount.

Nothing under a mount reaches the layer: the targets are reported for the diff to exclude.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildpy.cas.store import Store
from buildpy.sandbox import snapshots
from buildpy.sandbox.spec import Mount

# (container id, host id, count) ranges, as the lines of /proc/PID/uid_map
IdMap = Sequence[tuple[int, int, int]]

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING = ("shared", "private", "locked")
_MAX_SYMLINKS = 40


class MountError(Exception):
    """A RUN --mount cannot be made (missing source or secret, bad target): one line."""

    user_facing = True


@dataclass(frozen=True)
class RunMount:
    """One `RUN --mount=…` as the executor resolved it (BuildKit's per-type defaults applied:
    bind is read-only, cache is not)."""

    type: str = "bind"
    target: str = ""
    source: str = ""  # bind/cache: a path inside from_dir; secret: the id (BuildKit's alias)
    from_dir: Path | None = None  # bind: where `source` is read (the context by default)
    id: str = ""
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    readonly: bool = True
    required: bool = False
    size: int = 0
    env: str | None = None


@dataclass(frozen=True)
class Resolved:
    """What the sandbox needs: the mounts, variables for the process ("KEY=VALUE"), and the
    container paths mounted over (for `diff`'s `exclude`)."""

    mounts: tuple[Mount, ...]
    env: tuple[str, ...]
    targets: frozenset[str]


def cache_root(store: Store) -> Path:
    return store.root / "cache-mounts"


@contextlib.contextmanager
def resolve(
    run_mounts: Sequence[RunMount],
    *,
    store: Store,
    secrets: Mapping[str, bytes] | None = None,
    ssh_agents: Mapping[str, str] | None = None,
    uid_map: IdMap | None = None,
    gid_map: IdMap | None = None,
) -> Iterator[Resolved]:
    """Make the mounts' sources for one step; they (and cache locks) last until the block ends.
    uid_map/gid_map: how the sandbox maps the container's ids to the host's (None: identity)."""
    if ssh_agents is None:
        sock = os.environ.get("SSH_AUTH_SOCK")
        ssh_agents = {"default": sock} if sock else {}
    with contextlib.ExitStack() as stack:
        mounts: list[Mount] = []
        env: list[str] = []
        ssh_index = 0
        for m in run_mounts:
            if m.type not in MOUNT_TYPES:
                raise MountError(f"unsupported mount type {m.type!r}")
            if m.type == "bind":
                mounts.append(_bind(m, store, stack))
            elif m.type == "cache":
                mounts.append(_cache(m, store, stack, uid_map, gid_map))
            elif m.type == "tmpfs":
                options = (f"size={m.size}",) if m.size else ()
                mounts.append(Mount(_target(m.target, "tmpfs"), "tmpfs", None, False, options))
            elif m.type == "secret":
                mount, var = _secret(m, secrets or {}, stack, uid_map, gid_map)
                mounts += [mount] if mount else []
                env += [var] if var else []
            else:
                target = m.target or f"/run/buildkit/ssh_agent.{ssh_index}"
                ssh_index += 1
                mount = _ssh(m, target, ssh_agents)
                if mount is not None:
                    if not any(v.startswith("SSH_AUTH_SOCK=") for v in env):
                        env.append(f"SSH_AUTH_SOCK={mount.target}")
                    mounts.append(mount)
        yield Resolved(tuple(mounts), tuple(env), frozenset(m.target for m in mounts))


def _target(target: str, kind: str) -> str:
    if not target:
        raise MountError(f"a {kind} mount needs a target")
    norm = os.path.normpath("/" + target.lstrip("/"))
    if not target.startswith("/"):
        # BuildKit resolves a relative target against the working directory: the executor does
        raise MountError(f"mount target {target!r} is not an absolute path")
    if norm == "/":
        raise MountError(f"cannot mount a {kind} on /")
    return norm


def resolve_in_root(root: Path, path: str) -> Path:
    """`path` inside `root`, symlinks followed as if `root` were `/` (so none leads out)."""
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        comp = todo.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, comp)
        try:
            st = os.lstat(here)
        except (FileNotFoundError, NotADirectoryError):
            raise MountError(f"mount source {'/' + path.strip('/')!r} not found") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise MountError(f"mount source {path!r}: too many levels of symbolic links")
            link = os.readlink(here)
            if link.startswith("/"):
                done = []
            todo = [p for p in link.split("/") if p] + todo
            continue
        done.append(comp)
    return root.joinpath(*done)


def _bind(m: RunMount, store: Store, stack: contextlib.ExitStack) -> Mount:
    target = _target(m.target, "bind")
    if m.from_dir is None:
        raise MountError(f"bind mount on {target}: no source root (build context or stage) was given")
    src = resolve_in_root(m.from_dir, m.source)
    if not src.exists():
        raise MountError(f"mount source {m.source or '/'!r} not found")
    if m.readonly:
        return Mount(target, "bind", src, True)
    # rw: the step may write, but nothing of it may reach the source: a private copy
    tmp = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="bind-rw-"))
    stack.callback(snapshots.remove_tree, tmp)
    copy = tmp / "src"
    if src.is_dir():
        snapshots.materialize((src,), copy)
    else:
        snapshots.copy_file_data(src, copy)
        st = os.stat(src)
        os.chmod(copy, stat.S_IMODE(st.st_mode))
    return Mount(target, "bind", copy, False)


def _host_id(container_id: int, idmap: IdMap | None, what: str) -> int:
    if idmap is None:
        return container_id
    for inside, outside, count in idmap:
        if inside <= container_id < inside + count:
            return outside + container_id - inside
    raise MountError(f"{what} {container_id} is not mapped in the sandbox's user namespace")


def _chown(path: Path, uid: int, gid: int, uid_map: IdMap | None, gid_map: IdMap | None) -> None:
    host = (_host_id(uid, uid_map, "uid"), _host_id(gid, gid_map, "gid"))
    if (os.lstat(path).st_uid, os.lstat(path).st_gid) == host:
        return
    try:
        os.chown(path, *host)
    except PermissionError:
        raise MountError(f"cannot give {path} to {uid}:{gid} (host {host[0]}:{host[1]}) without root") from None


def cache_dir_name(mount_id: str, target: str) -> str:
    """The directory under `cache_root` a cache mount uses (its id, else its target)."""
    return _cache_name(mount_id or os.path.normpath("/" + target.lstrip("/")))


def _cache_name(key: str) -> str:
    name = urllib.parse.quote(key, safe="")
    if len(name) > 200 or name.startswith("."):
        name = "sha256-" + hashlib.sha256(key.encode()).hexdigest()
    return name


def _cache(
    m: RunMount, store: Store, stack: contextlib.ExitStack, uid_map: IdMap | None, gid_map: IdMap | None
) -> Mount:
    target = _target(m.target, "cache")
    sharing = m.sharing or "shared"
    if sharing not in SHARING:
        raise MountError(f"unsupported sharing value {sharing!r}")
    root = cache_root(store)
    root.mkdir(exist_ok=True)
    name = cache_dir_name(m.id, target)
    if sharing == "private":
        for i in range(1 << 16):
            candidate = name if i == 0 else f"{name}.private-{i}"
            fd = _lock_fd(root / f"{candidate}.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            stack.callback(os.close, fd)
            name = candidate
            break
    else:
        fd = _lock_fd(root / f"{name}.lock")
        stack.callback(os.close, fd)  # registered first: closing is what releases the lock
        fcntl.flock(fd, fcntl.LOCK_EX if sharing == "locked" else fcntl.LOCK_SH)
    path = root / name
    if not path.is_dir():
        _make_cache_dir(m, path, uid_map, gid_map)
    return Mount(target, "bind", path, m.readonly)


def _lock_fd(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _make_cache_dir(m: RunMount, path: Path, uid_map: IdMap | None, gid_map: IdMap | None) -> None:
    """A new cache dir, made whole aside and renamed into place (a concurrent maker may win)."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".new-"))
    try:
        new = tmp / "d"
        seed = resolve_in_root(m.from_dir, m.source) if m.from_dir is not None else None
        if seed is not None and seed.is_dir():
            snapshots.materialize((seed,), new)
        else:
            os.mkdir(new)
        os.chmod(new, 0o755 if m.mode is None else m.mode & 0o7777)
        _chown(new, m.uid or 0, m.gid or 0, uid_map, gid_map)
        if m.mode is not None:
            os.chmod(new, m.mode & 0o7777)  # again: chown clears setgid
        snapshots.rename_noreplace(new, path)
    finally:
        snapshots.remove_tree(tmp)


def _secret_parent() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _secret(
    m: RunMount,
    secrets: Mapping[str, bytes],
    stack: contextlib.ExitStack,
    uid_map: IdMap | None,
    gid_map: IdMap | None,
) -> tuple[Mount | None, str | None]:
    sid = m.id or m.source or (os.path.basename(m.target.rstrip("/")) if m.target else "")
    if not sid:
        raise MountError("a secret mount needs an id or a target")
    value = secrets.get(sid)
    if value is None:
        if m.required:
            raise MountError(f"secret {sid} not found")
        return None, None
    var = f"{m.env}={value.decode('utf-8', 'surrogateescape')}" if m.env else None
    if m.env and not m.target:
        return None, var
    target = _target(m.target or f"/run/secrets/{sid}", "secret")
    tmp = Path(tempfile.mkdtemp(dir=_secret_parent(), prefix="buildpy-secret-"))  # 0700
    stack.callback(snapshots.remove_tree, tmp)
    path = tmp / "secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(value)
    _chown(path, m.uid or 0, m.gid or 0, uid_map, gid_map)
    os.chmod(path, 0o400 if m.mode is None else m.mode & 0o7777)
    return Mount(target, "file", path, True), var


def _ssh(m: RunMount, target: str, agents: Mapping[str, str]) -> Mount | None:
    sid = m.id or "default"
    sock = agents.get(sid)
    ok = False
    if sock:
        try:
            ok = stat.S_ISSOCK(os.stat(sock).st_mode)
        except OSError:
            ok = False
    if not ok:
        if m.required:
            raise MountError(f"no SSH agent socket for ssh mount {sid!r} (is SSH_AUTH_SOCK set?)")
        return None
    return Mount(_target(target, "ssh"), "file", Path(sock), True)  # type: ignore[arg-type]
