"""Layer compression: gzip, zstd, or none, as streams that wrap a file object.

(First cut: zlib and zstandard; the speed work — isal, both cores — belongs here too.)
"""

from __future__ import annotations

import gzip
from typing import BinaryIO, Protocol

import zstandard

COMPRESSIONS = ("gzip", "zstd", "")


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


def detect(header: bytes) -> str:
    """The compression of a stream from its first bytes: 'gzip', 'zstd' or ''."""
    if header[:2] == b"\x1f\x8b":
        return "gzip"
    if header[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return ""


class CompressWriter:
    """Compresses what is written to it into `out`; `close()` flushes the end (not closing `out`)."""

    def __init__(self, out: Sink, compression: str, level: int | None = None) -> None:
        self.compression = compression
        if compression == "gzip":
            # mtime=0 and no file name: the same tar gives the same blob
            self._w = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level or 6, mtime=0)  # type: ignore[arg-type]
        elif compression == "zstd":
            self._w = zstandard.ZstdCompressor(level=level or 3, threads=-1).stream_writer(out, closefd=False)  # type: ignore[arg-type]
        elif compression == "":
            self._w = out  # type: ignore[assignment]
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def write(self, data: bytes | memoryview) -> int:
        return self._w.write(data)

    def close(self) -> None:
        if self.compression:
            self._w.close()


def decompress_reader(inp: BinaryIO, compression: str) -> BinaryIO:
    """A readable stream of the uncompressed bytes of `inp`."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=inp, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(inp, read_across_frames=True)  # type: ignore[return-value]
    if compression == "":
        return inp
    raise ValueError(f"unknown compression {compression!r}")
