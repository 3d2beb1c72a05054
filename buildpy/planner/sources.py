"""Build contexts that are not a local folder, made into one: `-` (a tar on stdin, plain or
compressed, or a bare Dockerfile meaning an empty context), a git URL (`https://…/repo.git`,
`git@host:repo.git`, `ssh://`, `git://`, `file://…/repo.git`, with `#REF:SUBDIR`), an
http(s) tarball URL (or a plain Dockerfile there).

A git context is checked out once per commit under `ROOT/sources/git/<url>/<commit>/`
(the system `git`: shallow fetch of just that ref, submodules as BuildKit fetches them, `.git`
left out unless `BUILDKIT_CONTEXT_KEEP_GIT_DIR=1`), so a second build of the same commit reads
the same directory and reuses every step. Archives are unpacked as `contexttar.py` says (no
absolute names, no `..`, nothing written through a symlink, no devices).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

GIT_TIMEOUT = 600
HTTP_MAX = 1 << 30  # a context tarball larger than this is refused


class SourceError(Exception):
    user_facing = True


@dataclass(frozen=True)
class SourceAuth:
    """Credentials for private sources, from the build's secrets as BuildKit names them:
    `GIT_AUTH_TOKEN` (https git, sent as `x-access-token`), `GIT_AUTH_HEADER` (a whole
    Authorization value), `HTTP_AUTH_HEADER_<host>` / `HTTP_AUTH_TOKEN_<host>` (http sources),
    and an ssh agent for git over ssh. They reach git through its environment, never its
    arguments or a file, and no cache key or stored file holds them."""

    git_token: str = field(default="", repr=False)
    git_header: str = field(default="", repr=False)
    http_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ssh_sock: str = ""

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, bytes], ssh_agents: Mapping[str, str] | None = None) -> SourceAuth:
        def text(v: bytes) -> str:
            return v.decode("utf-8", "surrogateescape").strip()

        headers: dict[str, str] = {}
        for sid, value in secrets.items():
            if sid.startswith("HTTP_AUTH_TOKEN_"):
                headers.setdefault(sid[len("HTTP_AUTH_TOKEN_"):], f"Bearer {text(value)}")
            elif sid.startswith("HTTP_AUTH_HEADER_"):
                headers[sid[len("HTTP_AUTH_HEADER_"):]] = text(value)
        return cls(text(secrets.get("GIT_AUTH_TOKEN", b"")), text(secrets.get("GIT_AUTH_HEADER", b"")), headers,
                   (ssh_agents or {}).get("default", ""))

    def git_env(self, url: str) -> dict[str, str]:
        import base64
        import urllib.parse

        env: dict[str, str] = {}
        header = ""
        if self.git_header:
            header = f"Authorization: {self.git_header}"
        elif self.git_token:
            basic = base64.b64encode(f"x-access-token:{self.git_token}".encode()).decode()
            header = f"Authorization: basic {basic}"
        parts = urllib.parse.urlsplit(url)
        if header and parts.scheme in ("http", "https"):
            # scoped to that origin: a submodule elsewhere does not get the token
            env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0=f"http.{parts.scheme}://{parts.netloc}/.extraHeader",
                       GIT_CONFIG_VALUE_0=header)
        if self.ssh_sock:
            env["SSH_AUTH_SOCK"] = self.ssh_sock
        return env

    def http_header(self, url: str) -> dict[str, str]:
        import urllib.parse

        host = urllib.parse.urlsplit(url).hostname or ""
        value = self.http_headers.get(host)
        return {"Authorization": value} if value else {}


NO_AUTH = SourceAuth()


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
    from buildpy.planner.contexttar import ContextTarError, unpack

    try:
        unpack(io.BytesIO(raw), directory)
    except ContextTarError as e:
        raise SourceError(f"{what}: the context archive cannot be unpacked: {e}") from None


# --- http(s) -----------------------------------------------------------------------------------


def from_url(url: str, tmp_root: Path, auth: SourceAuth = NO_AUTH) -> Context:
    """A tarball (or a Dockerfile) at an http(s) URL."""
    import urllib.error
    import urllib.request

    tmp = Path(tempfile.mkdtemp(dir=tmp_root, prefix="context-"))
    try:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "buildpy"})
            for k, v in auth.http_header(url).items():
                request.add_unredirected_header(k, v)  # never sent on to where a redirect points
            with urllib.request.urlopen(request, timeout=60) as r:  # noqa: S310 - the user's own URL
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


def resolve_commit(url: str, ref: str, what: str, auth: SourceAuth = NO_AUTH) -> str:
    """The commit `ref` (a branch, tag or commit; "" for HEAD) names in the remote."""
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return ref
    out = _git(["ls-remote", "--", url, *([ref, f"refs/tags/{ref}^{{}}"] if ref else ["HEAD"])], what,
               env=auth.git_env(url))
    peeled = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        peeled[name] = sha
    for name in (f"refs/tags/{ref}^{{}}", f"refs/heads/{ref}", f"refs/tags/{ref}", ref, "HEAD"):
        if name in peeled:
            return peeled[name]
    raise SourceError(f"{what}: no ref {ref or 'HEAD'!r} in the repository")


def from_git(url: str, store_root: Path, keep_git_dir: bool | None = None, auth: SourceAuth = NO_AUTH) -> Context:
    """A git URL with `#REF:SUBDIR`, checked out once per commit under the store."""
    base, ref, subdir = split_fragment(url)
    what = f"git context {base}"
    if keep_git_dir is None:
        keep_git_dir = os.environ.get("BUILDKIT_CONTEXT_KEEP_GIT_DIR", "") in ("1", "true")
    env = auth.git_env(base)
    commit = resolve_commit(base, ref, what, auth)
    home = store_root / "sources" / "git" / hashlib.sha256(base.encode()).hexdigest()[:24]
    checkout = home / (commit + (".git-kept" if keep_git_dir else ""))
    if not checkout.is_dir():
        home.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=home, prefix=".fetch-"))
        try:
            _git(["init", "-q", str(tmp)], what)
            fetched = ref or "HEAD"
            try:
                _git(["fetch", "-q", "--depth", "1", "--no-tags", "--", base, commit], what, cwd=tmp, env=env)
            except SourceError:  # a server that does not serve unadvertised commits: fetch the ref
                _git(["fetch", "-q", "--depth", "1", "--no-tags", "--", base, fetched], what, cwd=tmp, env=env)
            _git(["checkout", "-q", commit], what, cwd=tmp)
            if (tmp / ".gitmodules").exists():
                _git(["submodule", "update", "--init", "--recursive", "--depth", "1"], what, cwd=tmp, env=env)
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
