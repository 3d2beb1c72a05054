"""One build step (RUN) from base layers to a new layer: snapshots of the layers, a fresh upper
dir over them (or, where overlayfs cannot be mounted, a copy of them), the RUN mounts, the
sandboxed process, and its change written into the store as a layer.

The step's temp dir (upper, work, rootfs; or the copied root) lives in `STORE_ROOT/tmp/` (the
snapshots' file system, so a copy can reflink) unless `workdir_root` says otherwise, and is
removed whatever happens, Ctrl-C included. A store lease is held throughout, so a prune
neither removes the temp dir nor blobs the new layer refers to.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from buildpy.cas.layers import Layer, add_layer
from buildpy.cas.media import Descriptor
from buildpy.cas.store import Store
from buildpy.sandbox import diff, snapshots
from buildpy.sandbox import mounts as mountlib
from buildpy.sandbox.spec import Overlay, Process, SandboxSpec

log = logging.getLogger("buildpy.sandbox")

Output = Callable[[bytes], None]
RootfsMode = Literal["auto", "overlay", "copy"]

# Mount points the sandbox itself supplies; when it had to make them they are no change.
SYSTEM_TARGETS = frozenset({"/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/proc", "/sys", "/dev"})
_SHORT_LOWERS_OVER = 3000  # bytes of lowerdir paths beyond which short symlinks stand in


@dataclass(frozen=True)
class StepResult:
    """exit_code: the process's (128+n for signal n). layer: the change, stored (None when the
    step failed or changed nothing). empty: it succeeded without a change (the image config's
    history then records `empty_layer: true`)."""

    exit_code: int
    layer: Layer | None
    empty: bool


class EntitlementError(Exception):
    """A step asked for a privilege the build did not grant."""

    user_facing = True


def check_entitlements(*, insecure: bool, network: str, allow: Collection[str]) -> None:
    """Refuse what BuildKit refuses without `--allow`: a step that leaves the sandbox's
    privileges behind, or shares the host's network by asking for it explicitly."""
    if insecure and "security.insecure" not in allow:
        raise EntitlementError("RUN --security=insecure needs the build to allow it: --allow security.insecure")
    if network == "host" and "network.host" not in allow:
        raise EntitlementError("RUN --network=host needs the build to allow it: --allow network.host")


def run_step(
    store: Store,
    *,
    layers: Sequence[Descriptor],
    diff_ids: Sequence[str],
    process: Process,
    mounts: Sequence[mountlib.RunMount] = (),
    network: str = "none",
    compression: str = "gzip",
    workdir_root: Path | None = None,
    hostname: str = "buildpy",
    extra_hosts: tuple[tuple[str, str], ...] = (),
    insecure: bool = False,
    timeout: float | None = None,
    stdout: Output | None = None,
    stderr: Output | None = None,
    secrets: Mapping[str, bytes] | None = None,
    ssh_agents: Mapping[str, str] | None = None,
    source_date_epoch: int | None = None,
    rootfs_mode: RootfsMode = "auto",
    unpacker: snapshots.Unpacker | None = None,
    allow: Collection[str] = (),
    cancel_fd: int | None = None,
) -> StepResult:
    """Run `process` on the image whose layers (base first) and diffIDs are given; its change
    becomes a layer in the store (`compression`: "gzip", "zstd" or ""). rootfs_mode: "auto"
    uses overlayfs where it can be mounted (else the copy; env BUILDPY_NO_OVERLAY=1 forces it),
    "overlay" and "copy" force one. `allow`: the build's entitlements, as BuildKit's `--allow`:
    `security.insecure` for `insecure`, `network.host` for network "host". `cancel_fd`: once
    readable, the process is killed and run.SandboxCancelled raised (nothing is stored)."""
    check_entitlements(insecure=insecure, network=network, allow=allow)
    from buildpy.sandbox import idmap
    from buildpy.sandbox.run import run  # lazily: the process side

    maps = idmap.for_current_user()
    uid_map = [(r.container, r.host, r.size) for r in maps.uids]
    gid_map = [(r.container, r.host, r.size) for r in maps.gids]
    with store.lease(), snapshots.use(store, layers, diff_ids, unpacker=unpacker) as lowers:
        base = workdir_root or store.tmp_dir
        tmp = Path(tempfile.mkdtemp(dir=base, prefix="step-"))
        try:
            with mountlib.resolve(
                mounts, store=store, secrets=secrets, ssh_agents=ssh_agents, uid_map=uid_map, gid_map=gid_map
            ) as resolved:
                exclude = set(resolved.targets) | SYSTEM_TARGETS
                proc = dataclasses.replace(process, env=tuple(process.env) + resolved.env)
                use_overlay = _choose(rootfs_mode, lowers, tmp)
                rootfs = tmp / "rootfs"
                upper = tmp / "upper"
                dir_ids: dict[str, tuple[int, int]] = {}
                if use_overlay:
                    log.debug("step rootfs: overlayfs over %d snapshot(s)", len(lowers))
                    overlay = _overlay(lowers, tmp)
                    rootfs.mkdir()
                else:
                    log.debug("step rootfs: a copy of %d snapshot(s) and a tree diff (overlayfs not used)", len(lowers))
                    overlay = None
                    dir_ids = snapshots.materialize(lowers, rootfs)
                spec = SandboxSpec(
                    rootfs=rootfs,
                    process=proc,
                    overlay=overlay,
                    mounts=resolved.mounts,
                    network=network,
                    hostname=hostname,
                    extra_hosts=extra_hosts,
                    insecure=insecure,
                    timeout=timeout,
                )
                code = run(spec, stdout=stdout, stderr=stderr, cancel_fd=cancel_fd)
                if code != 0:
                    return StepResult(code, None, False)
            job = {
                "root": str(upper if use_overlay else rootfs),
                "overlay": use_overlay,
                "lowers": [str(p) for p in lowers],
                "exclude": sorted(exclude),
                "dir_ids": dir_ids,
                "source_date_epoch": source_date_epoch,
            }
            layer = layer_of_job(store, maps, job, compression)
            if layer is None:
                return StepResult(0, None, True)
            log.debug("step layer %s", layer.diff_id)
            return StepResult(0, layer, False)
        finally:
            try:
                remove_workdir(tmp)
            except Exception as e:  # never hide the step's own outcome (or a Ctrl-C)
                log.warning("could not remove the step's temp dir %s: %s", tmp, e)


def layer_of_job(store: Store, maps: object, job: dict, compression: str) -> Layer | None:
    """The layer of a sandbox's change (`job`: root, overlay, lowers, exclude, dir_ids,
    source_date_epoch), None when nothing changed."""
    if getattr(maps, "mode", "") == "helper":
        # the step's files belong to the range's ids, which only the user namespace's
        # root may read: the diff runs in one (and sees the container's ids there)
        return _layer_in_userns(store, maps, job, compression)
    uid_map = [(r.container, r.host, r.size) for r in maps.uids]  # type: ignore[attr-defined]
    gid_map = [(r.container, r.host, r.size) for r in maps.gids]  # type: ignore[attr-defined]
    return _layer(store, job, compression, uid_map, gid_map)


def upper_layer(store: Store, upper: Path, lowers: Sequence[Path], exclude: Collection[str],
                compression: str = "gzip") -> Layer | None:
    """The change an overlay's upper dir holds over `lowers`, as a layer (a container's commit)."""
    from buildpy.sandbox import idmap

    job = {"root": str(upper), "overlay": True, "lowers": [str(p) for p in lowers],
           "exclude": sorted(set(exclude) | SYSTEM_TARGETS), "dir_ids": {}, "source_date_epoch": None}
    return layer_of_job(store, idmap.for_current_user(), job, compression)


def overlay_on(lowers: tuple[Path, ...], workdir: Path) -> Overlay:
    """An overlay over `lowers` with its upper and work dirs in `workdir`. A container started
    again finds its upper dir there: it stays (the container's change so far, as docker keeps
    it across restarts); what the last mount left (work dir, lowerdir links) is made anew."""
    upper = workdir / "upper"
    if not upper.is_dir():
        return _overlay(lowers, workdir)
    for leftover in ("work", "l", "empty"):
        snapshots.remove_tree(workdir / leftover)
    kept = workdir / "upper.kept"
    upper.rename(kept)
    overlay = _overlay(lowers, workdir)
    upper.rmdir()
    kept.rename(upper)
    return overlay


def remove_workdir(path: Path) -> None:
    """Remove a sandbox's dir (upper, work, rootfs); rootless with an id range, files the range
    owns are removed from inside a user namespace."""
    from buildpy.sandbox import idmap

    if idmap.for_current_user().mode == "helper":
        _in_userns(idmap.for_current_user(), {"op": "rm", "path": str(path)}).communicate()
    snapshots.remove_tree(path)


def _changes(job: dict) -> list[diff.Change]:
    root, lowers, exclude = Path(job["root"]), [Path(p) for p in job["lowers"]], set(job["exclude"])
    if job["overlay"]:
        return diff.upper_changes(root, lowers, exclude=exclude)
    dir_ids = {k: (v[0], v[1]) for k, v in job["dir_ids"].items()}
    return diff.tree_changes(root, lowers, dir_ids=dir_ids, exclude=exclude)


def _layer(store: Store, job: dict, compression: str, uid_map: diff.IdMap | None,
           gid_map: diff.IdMap | None) -> Layer | None:
    changes = _changes(job)
    if not changes:
        return None
    stream = diff.tar_stream(changes, uid_map=uid_map, gid_map=gid_map, source_date_epoch=job["source_date_epoch"])
    return add_layer(store, stream, compression)


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_NS_WORKER = r"""
import ctypes, json, os, sys
sys.path.insert(0, sys.argv[4])
sync, go = int(sys.argv[1]), int(sys.argv[2])
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:
    sys.exit("unshare(CLONE_NEWUSER): " + os.strerror(ctypes.get_errno()))
os.write(sync, b"U")
os.close(sync)
if os.read(go, 1) != b"G":
    sys.exit("no id maps")
from buildpy.sandbox.step import _worker
_worker(json.loads(sys.argv[3]))
"""


def _in_userns(maps: object, job: dict) -> subprocess.Popen:
    """A Python worker in a new user namespace with the sandbox's id maps (as the sandbox's
    root it may read and remove what the step made), doing `job` (see `_worker`)."""
    from buildpy.sandbox import idmap

    sync_r, sync_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _NS_WORKER, str(sync_w), str(go_r), json.dumps(job), _PACKAGE_ROOT],
            pass_fds=(sync_w, go_r), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        )
    finally:
        os.close(sync_w)
        os.close(go_r)
    try:
        with open(sync_r, "rb", buffering=0) as sync, open(go_w, "wb", buffering=0) as go:
            if sync.read(1) != b"U":
                raise OSError(f"the user namespace worker failed (exit status {proc.wait()})")
            idmap.apply(maps, proc.pid)  # type: ignore[arg-type]
            go.write(b"G")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _worker(job: dict) -> None:
    """In the user namespace: "diff" writes b"E" (no change) or b"L" and the layer tar to
    stdout; "rm" removes a tree."""
    if job["op"] == "rm":
        snapshots.remove_tree(Path(job["path"]))
        return
    out = sys.stdout.buffer
    changes = _changes(job)
    out.write(b"L" if changes else b"E")
    for chunk in diff.iter_tar(changes, source_date_epoch=job["source_date_epoch"]):
        out.write(chunk)
    out.flush()


def _layer_in_userns(store: Store, maps: object, job: dict, compression: str) -> Layer | None:
    proc = _in_userns(maps, dict(job, op="diff"))
    assert proc.stdout is not None
    try:
        kind = proc.stdout.read(1)
        layer = add_layer(store, proc.stdout, compression) if kind == b"L" else None  # type: ignore[arg-type]
        proc.stdout.read()
    except BaseException:
        proc.kill()
        raise
    finally:
        code = proc.wait()
    if code != 0 or kind not in (b"L", b"E"):
        assert proc.stderr is not None
        lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
        # the worker's last line is its exception ("…DiffError: the step made /x: …")
        raise diff.DiffError(lines[-1].partition(": ")[2] if lines else f"diff worker exit status {code}")
    return layer


def _overlay(lowers: tuple[Path, ...], tmp: Path) -> Overlay:
    upper, work = tmp / "upper", tmp / "work"
    upper.mkdir()
    work.mkdir()
    if not lowers:  # FROM scratch: overlayfs wants a lowerdir
        empty = tmp / "empty"
        empty.mkdir()
        lowers = (empty,)
    # the merged root takes the upper dir's mode and owner: make them the image's root's
    top = os.lstat(lowers[0])
    os.chmod(upper, stat.S_IMODE(top.st_mode))
    if os.geteuid() == 0:
        os.chown(upper, top.st_uid, top.st_gid)
    if snapshots.lowerdir_size(lowers) > _SHORT_LOWERS_OVER:
        lowers = snapshots.short_lowers(lowers, tmp / "l")
    return Overlay(tuple(lowers), upper, work)


def _overlay_fits(lowers: tuple[Path, ...], tmp: Path) -> bool:
    """Whether the overlay's mount options fit one page as the sandbox writes them: paths
    relative to their common parent, which is `tmp` once `short_lowers` applies (the sandbox
    links its stub layer beside the upper dir, as `tmp/.stubs`)."""
    if snapshots.lowerdir_size(lowers) > _SHORT_LOWERS_OVER:
        lowers = tuple(tmp / "l" / "xx" for _ in lowers)  # what short_lowers would make
    paths = [*lowers, tmp / ".stubs", tmp / "upper", tmp / "work"]
    base = os.path.commonpath(paths)
    size = sum(len(os.fsencode(os.path.relpath(p, base))) for p in paths) + len(paths) + 64
    return size <= snapshots.MOUNT_DATA_MAX


_overlay_ok: dict[tuple[int, int], bool] = {}
_overlay_lock = threading.Lock()

_PROBE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.geteuid(), os.getegid()
if libc.unshare(0x10000000 | 0x00020000) != 0:
    sys.exit(2)
with open("/proc/self/setgroups", "w") as f: f.write("deny")
with open("/proc/self/uid_map", "w") as f: f.write(f"0 {uid} 1")
with open("/proc/self/gid_map", "w") as f: f.write(f"0 {gid} 1")
lower, upper, work, merged = sys.argv[1:5]
data = f"lowerdir={lower},upperdir={upper},workdir={work},userxattr".encode()
sys.exit(0 if libc.mount(b"overlay", merged.encode(), b"overlay", 0, data) == 0 else 1)
"""


def overlay_usable(where: Path) -> bool:
    """Whether the sandbox can mount overlayfs (in a user namespace, with `userxattr`) with its
    upper dir on the file system of `where`; probed once per process, user and file system."""
    key = (os.geteuid(), os.lstat(where).st_dev)
    with _overlay_lock:  # steps of parallel stages wait for one probe
        return _probe_overlay(key, where)


def _probe_overlay(key: tuple[int, int], where: Path) -> bool:
    if key not in _overlay_ok:
        probe = Path(tempfile.mkdtemp(dir=where, prefix="overlay-probe-"))
        try:
            dirs = [probe / n for n in ("l", "u", "w", "m")]
            for d in dirs:
                d.mkdir()
            done = subprocess.run([sys.executable, "-c", _PROBE, *map(str, dirs)], capture_output=True)
            _overlay_ok[key] = done.returncode == 0
        finally:
            snapshots.remove_tree(probe)
        if not _overlay_ok[key]:
            log.debug("overlayfs cannot be mounted here (%s): steps copy their root instead", where)
    return _overlay_ok[key]


def _choose(mode: RootfsMode, lowers: tuple[Path, ...], tmp: Path) -> bool:
    if mode == "overlay":
        return True
    if mode == "copy" or os.environ.get("BUILDPY_NO_OVERLAY") == "1":
        return False
    if len(lowers) > snapshots.MAX_LOWERS or not _overlay_fits(lowers, tmp):
        log.debug("%d layers: more than overlayfs can stack here", len(lowers))
        return False
    return overlay_usable(tmp)
