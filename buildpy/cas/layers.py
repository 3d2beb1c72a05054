"""Layers into the store: an uncompressed tar stream in, a compressed blob out, with its diffID
(the sha256 of the uncompressed tar, which configs list) computed on the way.

The store keeps an index diffID → blobs under `ROOT/diffids/` so that a layer built or pulled
once is found again whatever its compression.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import BinaryIO

from buildpy.cas.compress import GZIP_BLOCK, CompressWriter, decompress_reader
from buildpy.cas.digest import Hasher, hex_of
from buildpy.cas.media import Descriptor, layer_compression, oci_layer_type
from buildpy.cas.store import Store, write_atomic

_CHUNK = GZIP_BLOCK  # whole gzip blocks: the compressor takes them without a copy


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str


def add_layer(store: Store, tar: BinaryIO, compression: str = "gzip") -> Layer:
    """Compress an uncompressed tar stream into a new blob. The caller holds `store.lease()`.

    Three things happen to each block of the tar, on every core at once: the compressor's
    threads deflate it, this thread hashes it for the diffID (hashlib releases the GIL), and the
    compressed output is hashed and written as it comes back in order."""
    diff = Hasher()
    with store.ingest() as w:
        with CompressWriter(w, compression) as cw:
            while chunk := tar.read(_CHUNK):
                cw.write(chunk)  # first hand the block to the compressor's threads, then hash it
                if compression:
                    diff.update(chunk)
        digest = w.commit()
        size = w.hasher.size
    # uncompressed: the blob is the tar, its digest already the diffID
    layer = Layer(Descriptor(oci_layer_type(compression), digest, size), diff.digest if compression else digest)
    record_diff_id(store, layer)
    return layer


def diff_id_of(store: Store, layer: Descriptor) -> str:
    """The diffID of a stored layer blob, by decompressing it (callers cache what they need)."""
    h = Hasher()
    with store.open_blob(layer.digest) as f, decompress_reader(f, layer_compression(layer.media_type)) as r:
        while chunk := r.read(_CHUNK):
            h.update(chunk)
    return h.digest


def _index_path(store: Store, diff_id: str):
    return store.root / "diffids" / hex_of(diff_id)


def record_diff_id(store: Store, layer: Layer) -> None:
    """Remember that `layer.descriptor` holds the content `layer.diff_id`."""
    path = _index_path(store, layer.diff_id)
    path.parent.mkdir(exist_ok=True)
    # read inside the lock: two writers recording the same diffID must not drop each other's entry
    with store.lease(), store.lock("diffids"):
        known = blobs_for_diff_id(store, layer.diff_id)
        if any(d.digest == layer.descriptor.digest for d in known):
            return
        known.append(layer.descriptor)
        write_atomic(path, json.dumps([d.to_json() for d in known]).encode(), store.tmp_dir)


def blobs_for_diff_id(store: Store, diff_id: str) -> list[Descriptor]:
    """Stored blobs known to hold the uncompressed content `diff_id` (present ones only)."""
    try:
        entries = json.loads(_index_path(store, diff_id).read_bytes())
        descs = [Descriptor.from_json(e) for e in entries]
    except (FileNotFoundError, ValueError):
        return []
    return [d for d in descs if store.has_blob(d.digest)]
