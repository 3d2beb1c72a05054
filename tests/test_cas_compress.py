"""Layer compression (buildpy/cas/compress.py) and layers into the store (layers.py): standard
streams that gzip(1)/zstd(1) accept, the same bytes however the input is split, diffIDs right."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard

from buildpy.cas.compress import GZIP_BLOCK, CompressWriter, decompress_reader, detect, isal_level
from buildpy.cas.layers import add_layer, blobs_for_diff_id, diff_id_of
from buildpy.cas.store import Store


def sample(size: int, seed: int = 1) -> bytes:
    """Half text-like, half random: both the matching and the stored paths of deflate."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(2, 9)).hex() for _ in range(300)]
    text = " ".join(rng.choices(words, k=size // 8)).encode()[: size // 2]
    return text + rng.randbytes(size - len(text))


def compress(data: bytes, compression: str, pieces: list[int] | None = None, **kw) -> bytes:
    out = io.BytesIO()
    w = CompressWriter(out, compression, **kw)
    pos = 0
    for n in pieces or [len(data)]:
        w.write(data[pos:pos + n])
        pos += n
    w.write(data[pos:])
    w.close()
    return out.getvalue()


SIZES = [0, 1, GZIP_BLOCK - 1, GZIP_BLOCK, GZIP_BLOCK + 1, 3 * GZIP_BLOCK + 12345]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_round_trip(compression, size):
    data = sample(size)
    blob = compress(data, compression)
    assert detect(blob) == compression
    with decompress_reader(io.BytesIO(blob), compression) as r:
        assert r.read() == data
    if compression == "gzip":
        assert gzip.decompress(blob) == data  # the standard library's reader agrees
    else:
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read() == data


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_same_bytes_however_the_input_is_split(compression):
    data = sample(2 * GZIP_BLOCK + 777)
    whole = compress(data, compression)
    rng = random.Random(7)
    splits = [
        [1] * 100 + [GZIP_BLOCK - 100],
        [77777] * 40,
        [GZIP_BLOCK] * 2,
        [rng.randrange(1, 300_000) for _ in range(20)],
        [GZIP_BLOCK + 1, GZIP_BLOCK - 1],
    ]
    for pieces in splits:
        assert compress(data, compression, pieces) == whole
    assert compress(data, compression, threads=1) == whole  # nor on the number of threads


def test_gzip_header_is_deterministic():
    blob = compress(b"hello", "gzip")
    assert blob[:4] == b"\x1f\x8b\x08\x00"  # deflate, no FNAME/FCOMMENT/FEXTRA
    assert blob[4:8] == b"\0\0\0\0"  # mtime 0


@pytest.mark.parametrize("compression,tool", [("gzip", "gzip"), ("gzip", "pigz"), ("zstd", "zstd")])
def test_command_line_tools_accept_the_stream(tmp_path: Path, compression, tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool}(1) is not installed")
    data = sample(2 * GZIP_BLOCK + 5)
    path = tmp_path / "blob"
    path.write_bytes(compress(data, compression))
    subprocess.run([tool, "-t", str(path)], check=True)
    out = subprocess.run([tool, "-dc", str(path)], check=True, capture_output=True).stdout
    assert out == data


def test_gzip_reader_reads_concatenated_members():
    a, b = sample(1000, 1), sample(2000, 2)
    blob = compress(a, "gzip") + gzip.compress(b, mtime=0)
    with decompress_reader(io.BytesIO(blob), "gzip") as r:
        assert r.read() == a + b


def test_uncompressed_passes_through():
    out = io.BytesIO()
    with CompressWriter(out, "") as w:
        w.write(b"abc")
    assert out.getvalue() == b"abc"
    assert decompress_reader(io.BytesIO(b"abc"), "").read() == b"abc"


def test_levels():
    assert isal_level(None) == 2 and isal_level(6) == 2
    assert isal_level(1) == 1 and isal_level(9) == 3 and isal_level(0) == 0
    with pytest.raises(ValueError):
        isal_level(10)
    with pytest.raises(ValueError):
        CompressWriter(io.BytesIO(), "brotli")
    data = sample(GZIP_BLOCK)
    assert len(compress(data, "gzip", level=9)) <= len(compress(data, "gzip", level=1))


def test_detect():
    assert detect(b"\x1f\x8b\x08") == "gzip"
    assert detect(b"\x28\xb5\x2f\xfd\x00") == "zstd"
    assert detect(b"ustar") == ""


def test_abort_stops_the_workers():
    before = threading.active_count()

    class Failing(io.BytesIO):
        def write(self, b):  # the header is written at once; fail on the first block
            if len(b) > 10:
                raise OSError("disk full")
            return super().write(b)

    with pytest.raises(OSError, match="disk full"):
        with CompressWriter(Failing(), "gzip", threads=2) as w:
            for _ in range(20):
                w.write(sample(GZIP_BLOCK))
    assert threading.active_count() == before


# --- layers into the store ----------------------------------------------------------------


class Trickle(io.RawIOBase):
    """A pipe-like reader that returns a little at a time."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), 65536 + 13, len(self._data))
        b[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@pytest.mark.parametrize("compression", ["gzip", "zstd", ""])
def test_add_layer(tmp_path: Path, compression):
    tar = sample(3 * GZIP_BLOCK + 99)
    s1, s2 = Store(tmp_path / "s1"), Store(tmp_path / "s2")
    with s1.lease():
        a = add_layer(s1, io.BytesIO(tar), compression)
    with s2.lease():
        b = add_layer(s2, Trickle(tar), compression)  # type: ignore[arg-type]
    assert a.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert a == b  # same tar, same blob, however it was read
    blob = s1.read_blob(a.descriptor.digest)
    assert a.descriptor.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert a.descriptor.size == len(blob)
    assert diff_id_of(s1, a.descriptor) == a.diff_id
    assert [d.digest for d in blobs_for_diff_id(s1, a.diff_id)] == [a.descriptor.digest]
    if compression == "":
        assert a.descriptor.digest == a.diff_id


def test_one_diff_id_many_blobs(tmp_path: Path):
    store = Store(tmp_path / "s")
    tar = sample(100_000)
    with store.lease():
        g = add_layer(store, io.BytesIO(tar), "gzip")
        z = add_layer(store, io.BytesIO(tar), "zstd")
        add_layer(store, io.BytesIO(tar), "gzip")
    assert g.diff_id == z.diff_id
    assert sorted(d.digest for d in blobs_for_diff_id(store, g.diff_id)) == sorted(
        [g.descriptor.digest, z.descriptor.digest])
