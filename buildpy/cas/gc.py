"""Store housekeeping: `prune` removes what no ref reaches; `fsck` checks every blob and ref.

Prune is a stop-the-world mark and sweep under the exclusive `gc` lock. Every writer holds that
lock shared (`Store.lease()`) from its first blob to its ref, so a blob that is ingested and
about to be tagged is never swept, and no temp file in tmp/ belongs to a live process while
prune holds the lock. Both functions read only what a SIGKILL can leave behind: complete blobs
(renamed into place after fsync), a whole index.json, and stray temp files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildpy.cas.digest import ALGORITHM, DigestError
from buildpy.cas.image import children
from buildpy.cas.media import (
    CONFIGS,
    INDEXES,
    LAYERS,
    MANIFESTS,
    OCI_LAYOUT_VERSION,
    REF_NAME,
    Descriptor,
)
from buildpy.cas.store import Store, StoreError, write_atomic

CACHE_MOUNTS = "cache-mounts"  # ROOT/cache-mounts/: RUN --mount=type=cache dirs, kept across builds
_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PruneReport:
    blobs_removed: int
    bytes_freed: int
    tmp_freed: int
    cache_freed: int = 0
    # the IDs (config digests) of the image manifests swept; a detail, not part of a report's value
    images_removed: tuple[str, ...] = field(default=(), compare=False)

    @property
    def total_freed(self) -> int:
        return self.bytes_freed + self.tmp_freed + self.cache_freed


@dataclass(frozen=True)
class Problem:
    """One finding of fsck: `level` is "error" (the store is broken) or "info" (harmless)."""

    level: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.subject}: {self.message}"


# prune


def prune(store: Store, cache_mounts: bool = False, keep: Iterable[Descriptor] = ()) -> PruneReport:
    """Delete every blob no ref reaches, abandoned temp files, stale diffID entries and, when
    asked, the cache mounts. `keep`: more roots (the images containers run on). Waits for
    running writers (their leases) first."""
    with store.lock("gc"):
        live = _mark(store, list(keep))
        removed = freed = 0
        images: list[str] = []
        for name, path in _blob_files(store):
            if name in live:
                continue
            try:
                size = path.stat().st_size
                image_id = _image_id(path, size)
                freed += size
                path.unlink()
                if image_id and image_id.partition(":")[2] not in live:  # else the image lives on
                    images.append(image_id)
                removed += 1
            except FileNotFoundError:
                pass
        tmp_freed = store.clear_tmp()
        _drop_stale_diff_ids(store)
        cache_freed = _clear_dir(store.root / CACHE_MOUNTS) if cache_mounts else 0
    return PruneReport(removed, freed, tmp_freed, cache_freed, tuple(sorted(set(images))))


_MANIFEST_MAX = 4 << 20


def _image_id(path: Path, size: int) -> str | None:
    """The image ID when the blob at `path` is an image manifest (what docker's image prune
    reports as deleted); None for anything else."""
    if size > _MANIFEST_MAX:
        return None
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"{":
                return None
            obj = json.loads(b"{" + f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("mediaType") not in MANIFESTS | {None}:
        return None
    config, layers = obj.get("config"), obj.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list) or config.get("mediaType") not in CONFIGS:
        return None
    digest = config.get("digest")
    return digest if isinstance(digest, str) else None


def untag_unused(store: Store, keep: Iterable[Descriptor] = ()) -> list[str]:
    """`docker image prune -a`: remove every ref except those naming an image in `keep` (what
    containers use); returns the names removed. The blobs go at the next `prune`."""
    kept = {d.digest for d in keep}
    removed = []
    for name, desc in sorted(store.refs().items()):
        if desc.digest not in kept and store.delete_ref(name) is not None:
            removed.append(name)
    return removed


def _mark(store: Store, keep: list[Descriptor] | None = None) -> set[str]:
    """The hex names of every blob reachable from the refs (and `keep`). Refuses (rather than
    guess) when a present manifest or index cannot be read: sweeping then could delete a ref's
    layers."""
    live: set[str] = set()
    todo = store.entries() + list(keep or [])  # named refs, and any unnamed entry a layout tool may have added
    while todo:
        desc = todo.pop()
        hexpart = desc.digest.partition(":")[2]
        if hexpart in live:
            continue
        live.add(hexpart)
        if desc.media_type not in MANIFESTS | INDEXES or not store.has_blob(desc.digest):
            continue
        try:
            todo.extend(children(store, desc))
        except (StoreError, ValueError) as e:
            raise StoreError(
                f"cannot prune {store.root}: {desc.media_type} {desc.digest} is unreadable ({e}); "
                f"run `buildpy fsck` and `buildpy rmi` the image that names it"
            ) from None
    return live


def _blob_files(store: Store) -> list[tuple[str, Path]]:
    try:
        return [(e.name, Path(e.path)) for e in os.scandir(store.blobs_dir) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _drop_stale_diff_ids(store: Store) -> None:
    """Rewrite diffids/ entries to name only blobs that are still there (removing empty ones)."""
    folder = store.root / "diffids"
    if not folder.is_dir():
        return
    with store.lock("diffids"):
        for entry in os.scandir(folder):
            path = Path(entry.path)
            try:
                descs = [Descriptor.from_json(d) for d in json.loads(path.read_bytes())]
            except (ValueError, TypeError, OSError):
                descs = []  # unreadable: an index is only a cache, drop it
            kept = [d for d in descs if store.has_blob(d.digest)]
            if not kept:
                path.unlink(missing_ok=True)
            elif len(kept) != len(descs):
                write_atomic(path, json.dumps([d.to_json() for d in kept]).encode(), store.tmp_dir)


def _clear_dir(folder: Path) -> int:
    freed = 0
    if not folder.is_dir():
        return 0
    for entry in os.scandir(folder):
        freed += _tree_size(Path(entry.path))
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
    return freed


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


# fsck


def fsck(store: Store) -> list[Problem]:
    """Every problem found: blobs whose content does not match their name, refs whose manifest,
    config or layers are missing or unreadable, a damaged layout; leftover temp files as info."""
    # a lease: prune (which takes the gc lock exclusively) cannot remove blobs under our feet
    with store.lease():
        return _check_layout(store) + _check_blobs(store) + _check_refs(store) + _check_tmp(store)


def _check_layout(store: Store) -> list[Problem]:
    out = []
    layout = store.root / "oci-layout"
    try:
        obj = json.loads(layout.read_bytes())
        if not isinstance(obj, dict) or obj.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
            out.append(Problem("error", "oci-layout", f"imageLayoutVersion is not {OCI_LAYOUT_VERSION}"))
    except (OSError, ValueError) as e:
        out.append(Problem("error", "oci-layout", f"unreadable: {e}"))
    try:
        obj = json.loads(store.index_path.read_bytes())
    except (OSError, ValueError) as e:
        return out + [Problem("error", "index.json", f"unreadable: {e}")]
    if not isinstance(obj, dict) or obj.get("schemaVersion") != 2 or not isinstance(obj.get("manifests"), list):
        return out + [Problem("error", "index.json", "not an OCI index (schemaVersion 2 with a manifests list)")]
    for i, entry in enumerate(obj["manifests"]):
        try:
            d = Descriptor.from_json(entry, f"entry {i}")
        except DigestError as e:
            out.append(Problem("error", "index.json", str(e)))
            continue
        if not d.annotations.get(REF_NAME):
            out.append(Problem("info", "index.json", f"entry {i} ({d.digest}) has no ref name"))
    return out


def _check_blobs(store: Store) -> list[Problem]:
    out = []
    try:
        entries = list(os.scandir(store.blobs_dir))
    except FileNotFoundError:
        return [Problem("error", f"blobs/{ALGORITHM}", "missing")]
    for entry in sorted(entries, key=lambda e: e.name):
        subject = f"blob {ALGORITHM}:{entry.name}"
        if not entry.is_file(follow_symlinks=False):
            out.append(Problem("error", f"blobs/{ALGORITHM}/{entry.name}", "not a regular file"))
            continue
        if not _HEX.fullmatch(entry.name):
            out.append(Problem("error", f"blobs/{ALGORITHM}/{entry.name}", "not named by a sha256 digest"))
            continue
        try:
            with open(entry.path, "rb") as f:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            out.append(Problem("error", subject, f"unreadable: {e.strerror or e}"))
            continue
        if actual != entry.name:
            out.append(Problem("error", subject, f"content hashes to {ALGORITHM}:{actual}"))
    return out


def _check_refs(store: Store) -> list[Problem]:
    try:
        entries = store.entries()
    except (StoreError, ValueError):
        return []  # already reported by _check_layout
    out: list[Problem] = []
    checked: set[str] = set()
    for i, desc in enumerate(entries):
        name = desc.annotations.get(REF_NAME)
        _check_tree(store, f"ref {name}" if name else f"index.json entry {i}", desc, out, checked, optional=False)
    return out


def _check_tree(
    store: Store, subject: str, desc: Descriptor, out: list[Problem], checked: set[str], optional: bool
) -> None:
    """Check `desc` and what it points at. `optional`: an index's platform manifest, which a
    single-platform pull does not fetch, so its absence is info, not an error."""
    key = f"{desc.digest} {desc.size}"  # one blob, but every size a descriptor claims for it
    if key in checked:
        return
    checked.add(key)
    what = f"{desc.media_type} {desc.digest}"
    if not store.has_blob(desc.digest):
        out.append(Problem("info" if optional else "error", subject, f"{what} is missing"))
        return
    size = store.blob_size(desc.digest)
    if size != desc.size:
        out.append(Problem("error", subject, f"{what} has {size} bytes, its descriptor says {desc.size}"))
    if desc.media_type in LAYERS:
        return
    if desc.media_type not in MANIFESTS | INDEXES | CONFIGS:
        return  # an artifact or attestation we do not read: present is all we ask
    try:
        obj = store.read_json(desc.digest)
    except StoreError as e:
        out.append(Problem("error", subject, str(e)))
        return
    problem = _shape_problem(desc.media_type, obj)
    if problem:
        out.append(Problem("error", subject, f"{what}: {problem}"))
        return
    if desc.media_type in CONFIGS:
        return
    try:
        kids = children(store, desc)
    except (StoreError, ValueError) as e:
        out.append(Problem("error", subject, f"{what}: {e}"))
        return
    for kid in kids:
        _check_tree(store, subject, kid, out, checked, optional=desc.media_type in INDEXES)


def _shape_problem(media_type: str, obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "not a JSON object"
    if media_type in CONFIGS:
        rootfs = obj.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            return "config has no rootfs.diff_ids list"
        return None
    if obj.get("schemaVersion") != 2:
        return "schemaVersion is not 2"
    if media_type in INDEXES:
        return None if isinstance(obj.get("manifests"), list) else "index has no manifests list"
    if not isinstance(obj.get("config"), dict) or not isinstance(obj.get("layers"), list):
        return "manifest needs a config descriptor and a layers list"
    return None


def _check_tmp(store: Store) -> list[Problem]:
    try:
        names = sorted(os.listdir(store.tmp_dir))
    except FileNotFoundError:
        return [Problem("error", "tmp", "missing")]
    if not names:
        return []
    return [Problem("info", "tmp", f"{len(names)} leftover temp file(s) from interrupted writes; prune removes them")]
