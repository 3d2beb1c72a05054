"""sha256 digests as OCI writes them (`sha256:<64 hex>`): parsing, computing, verifying streams."""

from __future__ import annotations

import re

ALGORITHM = "sha256"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class DigestError(ValueError):
    """A digest that is malformed, or content that does not match its digest."""

    user_facing = True


def hex_of(digest: str) -> str:
    """The hex part of a sha256 digest; refuses anything else (it becomes a file name)."""
    m = _DIGEST.fullmatch(digest)
    if m is None:
        raise DigestError(f"invalid digest {digest!r}: want sha256:<64 lowercase hex>")
    return m.group(1)


def is_digest(text: str) -> bool:
    return _DIGEST.fullmatch(text) is not None


def of_bytes(data: bytes) -> str:
    import hashlib  # here, not above: a command that only reads the store never pays for OpenSSL

    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


class Hasher:
    """sha256 of a stream, fed as it passes; `digest` once it is done."""

    __slots__ = ("_h", "size")

    def __init__(self) -> None:
        import hashlib

        self._h = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return f"{ALGORITHM}:{self._h.hexdigest()}"
