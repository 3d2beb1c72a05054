"""Build contexts that are not a local folder, made into one: `-` (a tar on stdin, plain or
compressed, or a bare Dockerfile meaning an empty context), a git URL (`https://…/repo.git`,
`git@host:repo.git`, `ssh://`, `git://`, `file://…/repo.git`, with `#REF:SUBDIR`), an
http(s) tarball URL (or a plain Dockerfile there).

A git context is checked out once per commit under `ROOT/sources/git/<url>/<commit>/`
(the system `git`: shallow fetch of just that ref, submodules as BuildKit fetches them, `.git`
left out unless `BUILDKIT_CONTEXT_KEEP_GIT_DIR=1`), so a second build of the same commit reads
the same directory and reuses every step. Archives are unpacked with Python's `data` filter
(no absolute names, no `..`, no links leaving the tree, no devices).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

GIT_TIMEOUT = 600
HTTP_MAX = 1 << 30  # a context tarball larger than this is refused


class SourceError(Exception):
    user_facing = True


@dataclass(frozen=True)
class Context:
    """A context made local: the directory, the Dockerfile when the source supplied it, and
    what to remove afterwards (None: kept, e.g. a git checkout)."""

    directory: Path
    dockerfile: Path | None = None
    temporary: Path | None = None


def is_git_url(text: str) -> bool:
    """BuildKit's test: git://, git@, ssh://…, github.com/…, or an http(s)/file URL ending .git."""
    base = text.split("#", 1)[0]
    if text.startswith(("git://", "git@", "github.com/")) or re.match(r"ssh://", text):
        return True
    return bool(re.match(r"(https?|file)://", base)) and base.rstrip("/").endswith(".git")


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def split_fragment(url: str) -> tuple[str, str, str]:
    """`URL#REF:SUBDIR` → (URL, REF, SUBDIR)."""
    base, _, fragment = url.partition("#")
    ref, _, subdir = fragment.partition(":")
    return base, ref, subdir


def _inside(root: Path, subdir: str, what: str) -> Path:
    if not subdir:
        return root
    clean = os.path.normpath("/" + subdir).lstrip("/")
    path = (root / clean).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise SourceError(f"{what}: subdirectory {subdir!r} leaves the repository")
    if not path.is_dir():
        raise SourceError(f"{what}: no directory {subdir!r} in it")
    return path


# --- stdin and archives ------------------------------------------------------------------------


def from_stdin(stream: BinaryIO, tmp_root: Path) -> Context:
    """`build -`: a tar (plain, gzip, bzip2, xz, zstd) is the context; anything else is the
    Dockerfile of an empty context."""
    tmp = Path(tempfile.mkdtemp(dir=tmp_root, prefix="context-"))
    try:
        data = _read_bounded(stream, HTTP_MAX, "standard input")
        return _context_of_bytes(data, tmp, "standard input")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dockerfile_from_stdin(stream: BinaryIO, tmp_root: Path) -> Path:
    """`-f -`: the Dockerfile read from stdin into a temp file (the caller removes its dir)."""
    tmp = Path(tempfile.mkdtemp(dir=tmp_root, prefix="dockerfile-"))
    path = tmp / "Dockerfile"
    path.write_bytes(_read_bounded(stream, 16 << 20, "standard input"))
    return path


def _read_bounded(stream: BinaryIO, limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise SourceError(f"{what}: more than {limit} bytes")
    return data


def _context_of_bytes(data: bytes, tmp: Path, what: str) -> Context:
    raw = _decompress(data)
    if raw is not None and _is_tar(raw):
        directory = tmp / "context"
        directory.mkdir()
        _extract(raw, directory, what)
        return Context(directory, None, tmp)
    directory = tmp / "context"
    directory.mkdir()
    dockerfile = tmp / "Dockerfile"
    dockerfile.write_bytes(data)
    return Context(directory, dockerfile, tmp)


def _decompress(data: bytes) -> bytes | None:
    import bz2
    import gzip
    import lzma

    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:3] == b"BZh":
            return bz2.decompress(data)
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise SourceError(f"a compressed context that does not decompress: {e}") from None
    except Exception as e:  # zstandard's own error type
        raise SourceError(f"a compressed context that does not decompress: {e}") from None
    return data


def _is_tar(data: bytes) -> bool:
    return len(data) >= 512 and (data[257:262] == b"ustar" or _tar_checksum_ok(data[:512]))


def _tar_checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(header[:148]) + 8 * 32 + sum(header[156:512])
    return stored == computed


def _extract(raw: bytes, directory: Path, what: str) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
            t.extractall(directory, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise SourceError(f"{what}: the context archive cannot be unpacked: {e}") from None


# --- http(s) -----------------------------------------------------------------------------------


def from_url(url: str, tmp_root: Path) -> Context:
    """A tarball (or a Dockerfile) at an http(s) URL."""
    import urllib.error
    import urllib.request

    tmp = Path(tempfile.mkdtemp(dir=tmp_root, prefix="context-"))
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - the user's own URL
                announced = r.headers.get("Content-Length")
                if announced and announced.isdigit() and int(announced) > HTTP_MAX:
                    raise SourceError(f"{url}: {announced} bytes is more than a context may have")
                data = _read_bounded(r, HTTP_MAX, url)
        except urllib.error.HTTPError as e:
            raise SourceError(f"{url}: {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SourceError(f"{url}: {reason}") from None
        return _context_of_bytes(data, tmp, url)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- git ---------------------------------------------------------------------------------------


def _git(args: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    full_env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", **(env or {}))
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT,
                              env=full_env)
    except FileNotFoundError:
        raise SourceError(f"{what}: git is not installed (Debian package git)") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what}: git timed out") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise SourceError(f"{what}: {lines[-1] if lines else f'git exited {proc.returncode}'}")
    return proc.stdout


def resolve_commit(url: str, ref: str, what: str) -> str:
    """The commit `ref` (a branch, tag or commit; "" for HEAD) names in the remote."""
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return ref
    out = _git(["ls-remote", "--", url, *( [ref, f"refs/tags/{ref}^{{}}"] if ref else ["HEAD"])], what)
    peeled = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        peeled[name] = sha
    for name in (f"refs/tags/{ref}^{{}}", f"refs/heads/{ref}", f"refs/tags/{ref}", ref, "HEAD"):
        if name in peeled:
            return peeled[name]
    raise SourceError(f"{what}: no ref {ref or 'HEAD'!r} in the repository")


def from_git(url: str, store_root: Path, keep_git_dir: bool | None = None) -> Context:
    """A git URL with `#REF:SUBDIR`, checked out once per commit under the store."""
    base, ref, subdir = split_fragment(url)
    what = f"git context {base}"
    if keep_git_dir is None:
        keep_git_dir = os.environ.get("BUILDKIT_CONTEXT_KEEP_GIT_DIR", "") in ("1", "true")
    commit = resolve_commit(base, ref, what)
    home = store_root / "sources" / "git" / hashlib.sha256(base.encode()).hexdigest()[:24]
    checkout = home / (commit + (".git-kept" if keep_git_dir else ""))
    if not checkout.is_dir():
        home.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=home, prefix=".fetch-"))
        try:
            _git(["init", "-q", str(tmp)], what)
            fetched = ref or "HEAD"
            try:
                _git(["fetch", "-q", "--depth", "1", "--no-tags", "--", base, commit], what, cwd=tmp)
            except SourceError:  # a server that does not serve unadvertised commits: fetch the ref
                _git(["fetch", "-q", "--depth", "1", "--no-tags", "--", base, fetched], what, cwd=tmp)
            _git(["checkout", "-q", commit], what, cwd=tmp)
            if (tmp / ".gitmodules").exists():
                _git(["submodule", "update", "--init", "--recursive", "--depth", "1"], what, cwd=tmp)
            if not keep_git_dir:
                shutil.rmtree(tmp / ".git")
            try:
                os.rename(tmp, checkout)
            except OSError:
                if not checkout.is_dir():  # not another build's rename that won: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Context(_inside(checkout, subdir, what))
