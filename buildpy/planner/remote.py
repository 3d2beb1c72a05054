"""ADD of an http(s) URL: the file is fetched while planning, so that its cache key is its
content (a download that brings the same bytes keeps the cache, as BuildKit's http source
does), verified against `--checksum` while it streams, and kept in the store's tmp dir for the
step that copies it.

Nothing is stored on a mismatch, a body longer or shorter than announced, or a redirect loop;
each is one line naming the URL.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_TIMEOUT = 60


class FetchError(Exception):
    user_facing = True


@dataclass(frozen=True)
class Download:
    dir: Path  # the dir it was written to
    name: str  # the file name: the URL path's last part ("index.html" when it has none)
    digest: str  # sha256:…
    mtime: int | None  # from Last-Modified


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch(url: str, into: Path, checksum: str = "", headers: dict[str, str] | None = None) -> Download:
    """Download `url` into the dir `into` under its name; `checksum` ("sha256:HEX") is enforced."""
    if checksum and not checksum.startswith("sha256:"):
        raise FetchError(f"ADD --checksum={checksum}: only sha256:HEX checksums are supported")
    name = posixpath.basename(urllib.parse.urlsplit(url).path) or "index.html"
    tmp = into
    path = tmp / name
    if path.exists():
        raise FetchError(f"ADD {url}: another source of this ADD has the file name {name}")
    hasher = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "buildpy"})
        for k, v in (headers or {}).items():
            request.add_unredirected_header(k, v)  # credentials stay with the host they are for
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            announced = response.headers.get("Content-Length")
            size = 0
            with open(path, "wb") as f:
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if announced is not None and size > int(announced):
                        raise FetchError(f"ADD {url}: the body is longer than the {announced} bytes announced")
                    hasher.update(chunk)
                    f.write(chunk)
            if announced is not None and size != int(announced):
                raise FetchError(f"ADD {url}: the body ended after {size} of {announced} bytes")
            mtime = _last_modified(response.headers.get("Last-Modified"))
    except FetchError:
        _remove(path)
        raise
    except urllib.error.HTTPError as e:
        _remove(path)
        raise FetchError(f"ADD {url}: {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        _remove(path)
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"ADD {url}: {reason}") from None
    digest = "sha256:" + hasher.hexdigest()
    if checksum and checksum != digest:
        _remove(path)
        raise FetchError(f"ADD {url}: digest mismatch: expected {checksum}, got {digest}")
    os.chmod(path, 0o600)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return Download(tmp, name, digest, mtime)


def _last_modified(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError):
        return None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
