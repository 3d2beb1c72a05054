"""The build cache outside one machine: `--cache-to`/`--cache-from` with `type=registry,ref=R`
(an OCI artifact in any registry) or `type=local,dest=DIR|src=DIR` (an OCI layout on disk).

The artifact is an OCI image manifest, `artifactType` `application/vnd.buildpy.cache.v1`,
whose config (`application/vnd.buildpy.cache.config.v1+json`) maps each step's cache key to
its layer (an index into the manifest's layers, or null for a step that changed nothing), its
diffID and its creation time; the layers are the steps' layer blobs, so a registry keeps them
alive and any OCI tool can copy the cache. With `cache-mounts=true` the contents of the
build's `RUN --mount=type=cache` directories travel as extra layers annotated
`dev.buildpy.cache-mount` (their name), restored on import where the local one is empty.

Importing reads only the manifest and config: a layer is fetched when the build needs it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildpy.cas.buildcache import CacheRecord
from buildpy.cas.digest import hex_of, is_digest
from buildpy.cas.media import OCI_LAYOUT_VERSION, OCI_MANIFEST, REF_NAME, Descriptor
from buildpy.cas.reference import InvalidReference, parse
from buildpy.cas.store import Store, StoreError, canonical_json, write_atomic
from buildpy.registry.blobsource import BlobSource
from buildpy.registry.clients import Clients
from buildpy.registry.settings import RegistryError

ARTIFACT_TYPE = "application/vnd.buildpy.cache.v1"
CONFIG_TYPE = "application/vnd.buildpy.cache.config.v1+json"
MOUNT_ANNOTATION = "dev.buildpy.cache-mount"
LOCAL_TAG = "latest"
CONFIG_MAX = 64 << 20


class CacheSpecError(Exception):
    user_facing = True


@dataclass(frozen=True)
class CacheSpec:
    """One `--cache-from` or `--cache-to`."""

    type: str  # "registry" | "local"
    ref: str = ""  # registry
    path: str = ""  # local: dest= (to) or src= (from)
    mode: str = "min"
    cache_mounts: bool = False
    tag: str = LOCAL_TAG


def parse_spec(text: str, direction: str) -> CacheSpec:
    """`type=registry,ref=R[,mode=min|max][,cache-mounts=true]`, `type=local,dest=DIR`/`src=DIR`;
    a bare `R` is a registry ref (as `docker build --cache-from R`)."""
    flag = f"--cache-{direction}"
    if "=" not in text:
        text = f"type=registry,ref={text}"
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise CacheSpecError(f"invalid {flag} {text!r}: {part!r} is not KEY=VALUE")
        fields[key.strip()] = value.strip()
    kind = fields.pop("type", "registry")
    mode = fields.pop("mode", "min")
    if mode not in ("min", "max"):
        raise CacheSpecError(f"invalid {flag} {text!r}: mode must be min or max")
    mounts = fields.pop("cache-mounts", "false").lower()
    if mounts not in ("true", "false"):
        raise CacheSpecError(f"invalid {flag} {text!r}: cache-mounts must be true or false")
    for ignored in ("compression", "oci-mediatypes", "image-manifest", "ignore-error", "compression-level",
                    "force-compression"):
        fields.pop(ignored, None)
    if kind == "registry":
        ref = fields.pop("ref", "")
        if not ref:
            raise CacheSpecError(f"invalid {flag} {text!r}: ref= is required for type=registry")
        try:
            parse(ref)
        except InvalidReference as e:
            raise CacheSpecError(f"invalid {flag} {text!r}: {e}") from None
        spec = CacheSpec("registry", ref=ref, mode=mode, cache_mounts=mounts == "true")
    elif kind == "local":
        key = "dest" if direction == "to" else "src"
        path = fields.pop(key, "")
        if not path:
            raise CacheSpecError(f"invalid {flag} {text!r}: {key}= is required for type=local")
        spec = CacheSpec("local", path=path, mode=mode, cache_mounts=mounts == "true",
                         tag=fields.pop("tag", LOCAL_TAG))
    else:
        raise CacheSpecError(f"invalid {flag} {text!r}: type must be registry or local")
    fields.pop("dest" if direction == "from" else "src", None)
    if fields:
        raise CacheSpecError(f"invalid {flag} {text!r}: unknown option {sorted(fields)[0]!r}")
    return spec


@dataclass(frozen=True)
class Entry:
    key: str
    record: CacheRecord


@dataclass
class Imported:
    """What `--cache-from` brought: records by key, and cache-mount contents by name."""

    records: dict[str, CacheRecord] = field(default_factory=dict)
    mounts: dict[str, Descriptor] = field(default_factory=dict)


# --- the artifact ------------------------------------------------------------------------------


def _documents(store: Store, entries: Sequence[Entry], mounts: Sequence[tuple[str, Descriptor]]
               ) -> tuple[bytes, bytes, list[Descriptor]]:
    layers: list[Descriptor] = []
    position: dict[str, int] = {}
    records = {}
    for e in entries:
        index = None
        if e.record.layer is not None:
            d = e.record.layer
            if d.digest not in position:
                position[d.digest] = len(layers)
                layers.append(Descriptor(d.media_type, d.digest, d.size))
            index = position[d.digest]
        records[e.key] = {"layer": index, "diff_id": e.record.diff_id, "created": e.record.created}
    mount_index = {}
    for name, d in mounts:
        mount_index[name] = len(layers)
        layers.append(Descriptor(d.media_type, d.digest, d.size, {MOUNT_ANNOTATION: name}))
    config = canonical_json({"records": records, "mounts": mount_index})
    config_desc = Descriptor(CONFIG_TYPE, store.put_bytes(config), len(config))
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": config_desc.to_json(), "layers": [d.to_json() for d in layers],
    })
    return manifest, config, [config_desc] + layers


def _read_documents(manifest_bytes: bytes, config_bytes_of, where: str) -> tuple[Imported, list[Descriptor]]:  # noqa: ANN001
    try:
        manifest = json.loads(manifest_bytes)
        config_desc = Descriptor.from_json(manifest["config"], f"{where}: config")
        layers = [Descriptor.from_json(d, f"{where}: layer") for d in manifest.get("layers", [])]
    except (ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{where}: not a build cache ({e})") from None
    if config_desc.media_type != CONFIG_TYPE:
        raise RegistryError(f"{where}: not a buildpy build cache (config type {config_desc.media_type})")
    if config_desc.size > CONFIG_MAX:
        raise RegistryError(f"{where}: cache config of {config_desc.size} bytes is too large")
    def layer_at(index: object) -> Descriptor:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(layers):
            raise ValueError(f"layer index {index!r} out of range")
        return layers[index]

    try:
        config = json.loads(config_bytes_of(config_desc))
        out = Imported()
        for key, rec in (config.get("records") or {}).items():
            index = rec.get("layer")
            if index is None:
                out.records[str(key)] = CacheRecord(None, "", str(rec.get("created", "")))
                continue
            diff_id = str(rec["diff_id"])
            hex_of(diff_id)
            out.records[str(key)] = CacheRecord(layer_at(index), diff_id, str(rec.get("created", "")))
        for name, index in (config.get("mounts") or {}).items():
            if "/" in name or name in ("", ".", "..") or name.startswith("."):
                raise ValueError(f"cache mount name {name!r}")
            out.mounts[str(name)] = layer_at(index)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise RegistryError(f"{where}: damaged cache config ({e})") from None
    return out, layers


# --- export ------------------------------------------------------------------------------------


def mount_layers(store: Store, dirs: Iterable[tuple[str, Path]]) -> list[tuple[str, Descriptor]]:
    """Each cache-mount directory as a gzip layer (its files as they are, owners and times kept)."""
    import tarfile

    from buildpy.cas.layers import add_layer

    out = []
    for name, path in dirs:
        if not path.is_dir():
            continue
        with tempfile.TemporaryFile(dir=store.tmp_dir) as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as t:
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames.sort()
                    for n in sorted(dirnames) + sorted(filenames):
                        full = os.path.join(dirpath, n)
                        t.add(full, arcname=os.path.relpath(full, path), recursive=False)
            f.seek(0)
            with store.lease():
                layer = add_layer(store, f, "gzip")
        out.append((name, layer.descriptor))
    return out


def export(store: Store, spec: CacheSpec, entries: Sequence[Entry], mounts: Sequence[tuple[str, Descriptor]],
           clients: Clients, blobs: BlobSource) -> str:
    """Write the cache where `spec` says; returns the cache manifest's digest."""
    from buildpy.registry.push import push_blobs  # the HTTP client: only when a cache is written
    with store.lease():
        manifest, _config, descs = _documents(store, entries, mounts)
        if spec.type == "local":
            return _export_local(store, Path(spec.path), spec.tag, manifest, descs, blobs)
        ref = parse(spec.ref)
        client = clients.get(ref.domain)
        repo = ref.path
        # a layer never fetched here (reused from an imported cache) may already be in the
        # registry; only what is missing there has to be fetched to be sent
        for d in descs:
            if not store.has_blob(d.digest) and not client.has_blob(repo, d.digest, for_push=True):
                blobs.ensure([d])
        push_blobs(store, client, repo, [d for d in descs])
        client.put_manifest(repo, ref.tag or ref.digest or "latest", OCI_MANIFEST, manifest)
    return store.put_bytes(manifest)


def _export_local(store: Store, root: Path, tag: str, manifest: bytes, descs: list[Descriptor],
                  blobs: BlobSource) -> str:
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    digest = store.put_bytes(manifest)
    for d in descs + [Descriptor(OCI_MANIFEST, digest, len(manifest))]:
        target = blob_dir / hex_of(d.digest)
        if target.exists():
            continue
        blobs.ensure([d])
        fd, tmp = tempfile.mkstemp(dir=blob_dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, store.open_blob(d.digest) as f:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    write_atomic(root / "oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
    entries = []
    try:
        entries = [m for m in json.loads((root / "index.json").read_text()).get("manifests", [])
                   if m.get("annotations", {}).get(REF_NAME) != tag]
    except (OSError, ValueError, AttributeError):
        pass
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest), "artifactType": ARTIFACT_TYPE,
             "annotations": {REF_NAME: tag}}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": entries + [entry]}
    write_atomic(root / "index.json", canonical_json(index))
    return digest


# --- import ------------------------------------------------------------------------------------


def import_cache(store: Store, spec: CacheSpec, clients: Clients, blobs: BlobSource) -> Imported:
    """Read a cache's records; its layers become fetchable through `blobs`."""
    if spec.type == "local":
        return _import_local(store, Path(spec.path), spec.tag, blobs)
    ref = parse(spec.ref)
    client = clients.get(ref.domain)
    repo = ref.path
    desc, data = client.get_manifest(repo, ref.digest or ref.tag or "latest")

    def config_bytes(d: Descriptor) -> bytes:
        client.fetch_blob(repo, d, store)
        return store.read_blob(d.digest)

    imported, layers = _read_documents(data, config_bytes, f"cache {spec.ref}")
    blobs.add_registry(client, repo, layers)
    return imported


def _import_local(store: Store, root: Path, tag: str, blobs: BlobSource) -> Imported:
    where = f"cache {root}"
    try:
        index = json.loads((root / "index.json").read_text())
        entries = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) == tag]
    except FileNotFoundError:
        return Imported()  # as BuildKit: a cache not written yet is no error
    except (OSError, ValueError, AttributeError) as e:
        raise RegistryError(f"{where}: cannot read index.json ({e})") from None
    if not entries:
        return Imported()
    manifest_desc = Descriptor.from_json(entries[-1], f"{where}: index entry")

    def blob_path(d: Descriptor) -> Path:
        if not is_digest(d.digest) or not d.digest.startswith("sha256:"):
            raise RegistryError(f"{where}: unsupported digest {d.digest}")
        return root / "blobs" / "sha256" / hex_of(d.digest)

    def copy_in(d: Descriptor) -> None:
        try:
            with open(blob_path(d), "rb") as f:
                store.put_stream(f, d.digest, d.size)
        except OSError as e:
            raise StoreError(f"{where}: blob {d.digest}: {e.strerror}") from None

    copy_in(manifest_desc)

    def config_bytes(d: Descriptor) -> bytes:
        copy_in(d)
        return store.read_blob(d.digest)

    imported, layers = _read_documents(store.read_blob(manifest_desc.digest), config_bytes, where)
    blobs.add(copy_in, layers)
    return imported


def restore_mounts(imported: Imported, names: Iterable[str], cache_root: Path, store: Store,
                   blobs: BlobSource) -> list[str]:
    """Unpack imported cache-mount contents for the named mounts that are empty or absent here."""
    from buildpy.cas.unpack import unpack_blob

    restored = []
    for name in names:
        desc = imported.mounts.get(name)
        target = cache_root / name
        if desc is None or (target.is_dir() and any(target.iterdir())):
            continue
        blobs.ensure([desc])
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=".restore-"))
        try:
            unpack_blob(store, desc, tmp, whiteouts="apply")
            tmp.chmod(0o755)
            if target.is_dir():
                target.rmdir()  # empty, checked above
            os.rename(tmp, target)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            continue
        restored.append(name)
    return restored
