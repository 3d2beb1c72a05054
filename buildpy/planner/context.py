"""The build context as COPY/ADD read it: which files a source names (wildcards, directories,
`.dockerignore`, `--exclude`), and a blake3 digest of exactly those files (path, type, mode,
ids, link target, content; never mtimes), with a stat cache so an unchanged context is read by
stat alone.

The same `ContextReader` serves any directory: the build context (with `.dockerignore` and a
stat cache in the store) and, at execution, a stage's materialized root for `COPY --from`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class ContextError(Exception):
    """A source that cannot be read: outside the context, missing, excluded. One line."""

    user_facing = True


class Entry(NamedTuple):
    """One path below a source root, as COPY sees it. A named tuple, not a frozen dataclass:
    a context has thousands of these, and a frozen dataclass's __init__ costs several times more."""

    rel: str  # relative to the reader's root, "/"-separated: "src/a.py"; "" is the root itself
    kind: str  # "file" | "dir" | "symlink" | "fifo" | "char" | "block"
    mode: int  # permission bits with suid/sgid/sticky (stat.S_IMODE)
    uid: int
    gid: int
    size: int
    mtime: int  # whole seconds (st_mtime), for the layer's headers only: not in any digest
    linkname: str = ""  # symlinks: the target as stored
    digest: str = ""  # files: blake3 hex of the content; "" for others
    rdev: int = 0  # devices: st_rdev
    ino: tuple[int, int] = (0, 0)  # (st_dev, st_ino): hardlinks within a copy stay hardlinks


@dataclass(frozen=True, slots=True)
class Match:
    """One path a source names. `entry.rel` is where it is below the root (a wildcard may match
    several); `children` holds, for a directory, every entry below it (rel still relative to the
    root), sorted by path, with ignored and `--exclude`d ones left out."""

    source: str  # the source as written (after variable expansion)
    entry: Entry
    children: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class Selection:
    """What one COPY/ADD reads from one root: a match list per source, in source order."""

    matches: tuple[Match, ...]


# --- reading a root --------------------------------------------------------------------------

import marshal  # noqa: E402 - below the shared dataclasses on purpose: they are the interface
import os  # noqa: E402
import posixpath  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import blake3  # noqa: E402

from buildpy.planner.dockerignore import Matcher  # noqa: E402

_CHUNK = 1 << 20
_MAX_LINKS = 40
_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block"}
_WILD = re.compile(r"[*?\[]")
_CACHE_VERSION = 1


class ContextReader:
    """Reads COPY sources from one directory: the build context (with its `.dockerignore` and a
    stat cache) or a stage's materialized root."""

    def __init__(self, root: Path, *, ignore: Matcher | None = None, stat_cache: Path | None = None) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)
        self.ignore = ignore if ignore else None
        self.stat_cache = stat_cache
        self._cache: dict[str, tuple[int, int, int, int, str]] | None = None
        self._seen: dict[str, tuple[int, int, int, int, str]] = {}
        self._changed = False
        self.hashed_files = 0  # files read to hash them (the rest came from the stat cache)

    # --- selecting -------------------------------------------------------------------------

    def select(self, sources: Sequence[str], *, excludes: Sequence[str] = (), follow: bool = True,
               what: str = "COPY") -> Selection:
        exclude = Matcher(excludes) if excludes else None
        matches: list[Match] = []
        for source in sources:
            found = self._matches(source, follow, what)
            if not found and not _WILD.search(source):  # a wildcard may match nothing (BuildKit)
                raise ContextError(f"{what} failed: file not found in build context or excluded by "
                                   f".dockerignore: stat {source.lstrip('/') or '.'}: file does not exist")
            for rel in found:
                entry = self._entry(rel)
                children: tuple[Entry, ...] = ()
                if entry.kind == "dir":
                    children = tuple(self._walk(rel, exclude))
                matches.append(Match(source, entry, children))
        return Selection(tuple(matches))

    def _matches(self, source: str, follow: bool, what: str) -> list[str]:
        # `../x` and `/x` both name the context's x: BuildKit removes parent navigation
        rel = posixpath.normpath("/" + source).lstrip("/")
        if not _WILD.search(rel):
            resolved = self._resolve(rel, follow)
            if resolved is None or self._ignored(resolved):
                return []
            return [resolved]
        out = [""]
        parts = rel.split("/")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: list[str] = []
            for base in out:
                if not _WILD.search(part):
                    cand = f"{base}/{part}" if base else part
                    r = self._resolve(cand, follow or not last)
                    if r is not None:
                        nxt.append(r)
                    continue
                regex = _go_match(part)
                dir_path = os.path.join(self._root, base) if base else self._root
                try:
                    names = sorted(os.listdir(dir_path))
                except OSError:
                    continue
                for name in names:
                    if regex.fullmatch(name):
                        cand = f"{base}/{name}" if base else name
                        r = self._resolve(cand, follow or not last)
                        if r is not None:
                            nxt.append(r)
            out = nxt
        return [r for r in dict.fromkeys(out) if not self._ignored(r)]

    def _resolve(self, rel: str, follow_last: bool) -> str | None:
        """`rel` with symlinks resolved as if the root were `/` (never above it); None when
        it does not exist."""

        def kind(cand: str) -> tuple[str, str]:
            try:
                st = os.lstat(os.path.join(self._root, cand))
            except (FileNotFoundError, NotADirectoryError):
                return "", ""
            if stat.S_ISLNK(st.st_mode):
                return "link", os.readlink(os.path.join(self._root, cand))
            return ("dir" if stat.S_ISDIR(st.st_mode) else "other"), ""

        try:
            return resolve_scoped(rel, kind, follow_last=follow_last, missing_ok=False)
        except RecursionError:
            raise ContextError(f"too many levels of symbolic links: {rel}") from None

    def _ignored(self, rel: str) -> bool:
        return bool(rel) and self.ignore is not None and self.ignore.matches(rel)

    def _walk(self, top: str, exclude: Matcher | None) -> list[Entry]:
        out: list[Entry] = []
        root = self._root
        ignore = self.ignore
        prefix_len = len(top) + 1 if top else 0

        def walk(rel_dir: str) -> None:
            path = os.path.join(root, rel_dir) if rel_dir else root
            try:
                with os.scandir(path) as it:
                    names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
            except OSError as e:
                raise ContextError(f"cannot read {rel_dir or '.'} in the build context: {e.strerror}") from None
            for name, is_dir in names:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                skip = ignore is not None and ignore.matches(rel)
                if not skip and exclude is not None:
                    skip = exclude.matches(rel[prefix_len:])
                if skip:
                    if is_dir and ((ignore is not None and ignore.may_include_below(rel)) or (
                            exclude is not None and exclude.may_include_below(rel[prefix_len:]))):
                        mark = len(out)
                        walk(rel)
                        if len(out) > mark:  # something inside is included: the dir comes too
                            out.insert(mark, self._entry(rel))
                    continue
                entry = self._entry(rel)
                if entry.kind == "":
                    continue
                out.append(entry)
                if is_dir:
                    walk(rel)

        walk(top)
        return out

    def _entry(self, rel: str) -> Entry:
        path = f"{self._root}/{rel}" if rel else self._root
        st = os.lstat(path)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "")
        link = os.readlink(path) if kind == "symlink" else ""
        digest = self._digest(rel, path, st) if kind == "file" else ""
        return Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                     int(st.st_mtime), link, digest, st.st_rdev if kind in ("char", "block") else 0,
                     (st.st_dev, st.st_ino))

    # --- hashing through the stat cache ------------------------------------------------------

    def _digest(self, rel: str, path: str, st: os.stat_result) -> str:
        if self._cache is None:
            self._cache = self._load()
        sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        hit = self._cache.get(rel)
        if hit is not None and hit[:4] == sig:
            self._seen[rel] = hit
            return hit[4]
        digest = _hash_file(path, st.st_size)
        self.hashed_files += 1
        self._seen[rel] = (*sig, digest)
        self._changed = True
        return digest

    def _load(self) -> dict[str, tuple[int, int, int, int, str]]:
        if self.stat_cache is None:
            return {}
        try:
            with open(self.stat_cache, "rb") as f:
                data = marshal.loads(f.read())  # load(f) reads item by item: ten times slower
            if isinstance(data, tuple) and len(data) == 3 and data[0] == _CACHE_VERSION and data[1] == self._root:
                entries = data[2]
                if isinstance(entries, dict):
                    return entries
        except (OSError, EOFError, ValueError, TypeError):
            pass
        return {}

    def save(self) -> None:
        """Write the stat cache (the files seen this run) when it changed."""
        if self.stat_cache is None or self._cache is None:
            return
        if not self._changed and len(self._seen) == len(self._cache):
            return
        merged = dict(self._seen)
        self.stat_cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.stat_cache.parent, prefix=".statcache-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(marshal.dumps((_CACHE_VERSION, self._root, merged)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.stat_cache)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def resolve_scoped(path: str, kind: Callable[[str], tuple[str, str]], *, follow_last: bool = True,
                   missing_ok: bool = True) -> str | None:
    """`path` resolved as a chroot would: each symlink on the way (and at the end, with
    `follow_last`) replaced by its target, an absolute target starting again at the root, `..`
    stopping there. `kind(rel)` says what is at `rel`: ("link", target), ("dir", ""),
    ("other", "") or ("", "") when nothing is. What does not exist is kept as written when
    `missing_ok`, else the answer is None. RecursionError past 40 links."""
    todo = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        what, target = kind("/".join(done + [part]))
        if what == "":
            if not missing_ok:
                return None
            done.append(part)
            done.extend(p for p in todo if p and p != ".")
            return "/".join(_clean_dots(done))
        if what == "link" and (todo or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise RecursionError(path)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p and p != "."] + todo
            continue
        if todo and what != "dir":
            if not missing_ok:
                return None
        done.append(part)
    return "/".join(done)


def _clean_dots(parts: list[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return out


def _go_match(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match for one path component."""
    out = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i < len(pattern):
            out += re.escape(pattern[i])
            i += 1
        elif ch == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise ContextError(f"syntax error in pattern: {pattern}")
            body = pattern[i:j]
            if body.startswith("^"):
                body = "^" + body[1:]
            out += "[" + body.replace("\\", "\\\\") + "]"
            i = j + 1
        else:
            out += re.escape(ch)
    return re.compile(out, re.DOTALL)


def _hash_file(path: str, size: int) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO) if size > 4 * _CHUNK else blake3.blake3()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def selection_digest(selection: Selection) -> str:
    """blake3 over what a COPY reads: for each match its source and path, and every entry's
    path (below the match), type, mode, ids, link target and content digest; never mtimes."""
    h = blake3.blake3()
    for m in selection.matches:
        base = m.entry.rel
        cut = len(base) + 1 if base else 0
        h.update(f"M\0{m.source}\0{base}\0".encode("utf-8", "surrogateescape"))
        for e in (m.entry, *m.children):
            rel = e.rel[cut:] if e is not m.entry else ""
            h.update(f"{rel}\0{e.kind}\0{e.mode}\0{e.uid}\0{e.gid}\0{e.linkname}\0{e.digest}\0{e.rdev}\n"
                     .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def selection_files(selection: Selection) -> dict[str, str]:
    """Path → a short fingerprint of each entry, to tell which files changed between builds."""
    out: dict[str, str] = {}
    for m in selection.matches:
        for e in (m.entry, *m.children):
            out[e.rel or "."] = f"{e.kind}:{e.mode:o}:{e.uid}:{e.gid}:{e.digest[:16]}{e.linkname}"
    return out


def changed_files(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """The paths added, removed or changed from `old` to `new`, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
