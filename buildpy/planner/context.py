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
import re  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import blake3  # noqa: E402

from buildpy.planner.dockerignore import IgnoreError, Matcher, glob_regex, go_clean, has_wildcards  # noqa: E402

_CHUNK = 1 << 20
_MAX_LINKS = 40
_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block"}
_IFMT, _IFREG, _IFDIR, _IFLNK = 0o170000, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
_new = tuple.__new__  # Entry(...) through its generated __new__ costs nearly three times as much
# the stat cache file: this line, blake3 of the rest, then marshal of (root, {rel: (stat, digest)})
_CACHE_MAGIC = b"buildpy stat cache 2\n"
# A file stamped less than a clock tick before it was hashed may change again keeping its size
# and times: it is hashed again next time rather than trusted (git's "racily clean" entries).
# Linux stamps files from a clock that advances by ticks of up to 10 ms; file systems that keep
# whole seconds (ext4's small inodes, FAT: two) show it in the stamp.
_RACY_NS = 50_000_000
_RACY_COARSE_NS = 2_000_000_000

_Sig = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


class ContextReader:
    """Reads COPY sources from one directory, as BuildKit reads them from a build context: the
    build context (with its `.dockerignore` and a stat cache) or a stage's materialized root.

    Not for concurrent use: one planner reads through it."""

    def __init__(self, root: Path, *, ignore: Matcher | None = None, stat_cache: Path | None = None) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)
        self.ignore = ignore if ignore else None
        self.stat_cache = stat_cache
        self.hashed_files = 0  # files read to hash them (the rest came from the stat cache)
        self._cache: dict[str, tuple[_Sig, str]] | None = None
        self._loaded = 0  # entries the cache file held
        self._seen: set[str] = set()
        self._racy: set[str] = set()
        self._changed = False
        self._kept_dirs: dict[str, bool] = {}  # ignored dir -> something inside it is not

    # --- selecting -------------------------------------------------------------------------

    def select(self, sources: Sequence[str], *, excludes: Sequence[str] = (), follow: bool = True,
               what: str = "COPY") -> Selection:
        """What `what` reads for `sources`, in order. Each source is joined to the root as
        BuildKit joins it to "/" (`..` stops there); symlinks on its way, and at its end with
        `follow`, resolve inside the root. A wildcard source (Go's filepath.Match, per path
        component) matches in walk order and may match nothing. Below a directory, links are
        kept as links and `excludes` (relative to that directory) leave entries out."""
        try:
            exclude = Matcher(excludes) if excludes else None
        except IgnoreError as e:
            raise ContextError(f"{what} failed: --exclude: {e}") from None
        matches: list[Match] = []
        try:
            for source in sources:
                for rel in self._named(source, follow, what):
                    entry = self._entry(rel, what)
                    children = tuple(self._walk(rel, exclude or None)) if entry.kind == "dir" else ()
                    matches.append(Match(source, entry, children))
        except IgnoreError as e:  # a pattern Go compiles only when it is first tried
            raise ContextError(f"{what} failed: {e}") from None
        return Selection(tuple(matches))

    def _named(self, source: str, follow: bool, what: str) -> list[str]:
        """The paths `source` names, resolved (fsutil's ResolveWildcards, then rootPath)."""
        parts = [p for p in go_clean("/" + source).split("/") if p]
        wild = next((i for i, part in enumerate(parts) if has_wildcards(part)), len(parts))
        if wild == len(parts):
            rel = self._resolve("/".join(parts), follow)
            if rel is None:
                raise _not_found(what, "/".join(parts))
            return [rel]
        regexes = []
        for part in parts[wild:]:
            regex = glob_regex(part)
            if regex is None:
                raise ContextError(f"{what} failed: syntax error in pattern: {source}")
            regexes.append(re.compile(regex).match)
        # the part before the first wildcard resolves like a plain source; below it only real
        # directories are searched (filepath.Walk follows no links)
        base = self._resolve("/".join(parts[:wild]), follow)
        if base is None or not self._is_real_dir(base):
            return []
        level = [base]
        last = len(regexes) - 1
        for depth, match in enumerate(regexes):
            found: list[str] = []
            for parent in level:
                try:
                    names = sorted(os.listdir(f"{self._root}/{parent}" if parent else self._root))
                except OSError:
                    continue
                for name in names:
                    if not match(name):
                        continue
                    rel = f"{parent}/{name}" if parent else name
                    if depth < last:
                        if not self._is_real_dir(rel) or self._hidden(rel):
                            continue
                    elif self._hidden(rel):
                        continue
                    found.append(rel)
            level = found
        if not follow:
            return level
        out: dict[str, None] = {}
        for rel in level:
            target = self._resolve(rel, True)
            if target is None:  # a link to nothing (or to what .dockerignore leaves out)
                raise _not_found(what, rel)
            out[target] = None
        return list(out)

    def _is_real_dir(self, rel: str) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(f"{self._root}/{rel}" if rel else self._root).st_mode)
        except OSError:
            return False

    def _resolve(self, rel: str, follow_last: bool) -> str | None:
        """`rel` with symlinks resolved as if the root were `/` (never above it), what
        `.dockerignore` leaves out being absent; None when it does not exist."""
        if not rel:
            return ""
        root = self._root

        def kind(cand: str) -> tuple[str, str]:
            path = f"{root}/{cand}"
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return "", ""
            except OSError as e:
                raise ContextError(f"cannot read {cand} in the build context: {e.strerror}") from None
            if self.ignore is not None and self._hidden(cand, st):
                return "", ""
            if stat.S_ISLNK(st.st_mode):
                return "link", os.readlink(path)
            return ("dir" if stat.S_ISDIR(st.st_mode) else "other"), ""

        try:
            return resolve_scoped(rel, kind, follow_last=follow_last, missing_ok=False)
        except RecursionError:
            raise ContextError(f"too many levels of symbolic links: {rel}") from None

    def _hidden(self, rel: str, st: os.stat_result | None = None) -> bool:
        """Whether `.dockerignore` removes `rel` from the context. A left-out directory is
        still there when something inside it is kept: BuildKit's walker sends the parents of
        what it keeps."""
        ignore = self.ignore
        if ignore is None or not rel or not ignore.matches(rel):
            return False
        if not ignore.may_include_below(rel):
            return True
        kept = self._kept_dirs.get(rel)
        if kept is None:
            kept = False
            path = f"{self._root}/{rel}"
            try:
                if st is None:
                    st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    kept = any(not self._hidden(f"{rel}/{name}") for name in sorted(os.listdir(path)))
            except OSError:
                pass
            self._kept_dirs[rel] = kept
        return not kept

    def _entry(self, rel: str, what: str) -> Entry:
        path = f"{self._root}/{rel}" if rel else self._root
        try:
            st = os.lstat(path)
        except OSError as e:
            raise ContextError(f"{what} failed: cannot read {rel or '.'}: {e.strerror}") from None
        kind = _KINDS.get(st.st_mode & _IFMT)
        if kind is None:
            raise ContextError(f"{what} failed: {rel} is a socket: it cannot be copied")
        digest = ""
        if kind == "file":
            cache = self._cache if self._cache is not None else self._load()
            sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            hit = cache.get(rel)
            digest = hit[1] if hit is not None and hit[0] == sig else self._hash(rel, path, st, sig)
            self._seen.add(rel)
        return _new(Entry, (rel, kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size, st[8],
                            os.readlink(path) if kind == "symlink" else "", digest,
                            st.st_rdev if kind in ("char", "block") else 0, (st.st_dev, st.st_ino)))

    def _walk(self, top: str, exclude: Matcher | None) -> list[Entry]:
        """Every entry below the directory `top`, depth first in name order, links not
        followed; what `.dockerignore` or `exclude` (relative to `top`) leaves out is skipped,
        a left-out directory coming back when something inside it is kept."""
        out: list[Entry] = []
        ignore = self.ignore
        cut = len(top) + 1 if top else 0
        cache = self._cache if self._cache is not None else self._load()
        add_seen = self._seen.add
        append = out.append
        hash_file = self._hash
        lstat, listdir, readlink = os.lstat, os.listdir, os.readlink
        kinds = _KINDS
        ignore_matches = ignore.matches if ignore is not None else None
        exclude_matches = exclude.matches if exclude is not None else None

        def walk(rel_dir: str, dir_path: str) -> None:
            try:
                names = listdir(dir_path)
            except OSError as e:
                raise ContextError(f"cannot read {rel_dir or '.'} in the build context: {e.strerror}") from None
            names.sort()
            prefix = rel_dir + "/" if rel_dir else ""
            for name in names:
                rel = prefix + name
                path = dir_path + "/" + name
                try:
                    st = lstat(path)
                except FileNotFoundError:  # removed while we read
                    continue
                mode = st.st_mode
                fmt = mode & _IFMT
                hidden = ignore_matches is not None and ignore_matches(rel)
                excluded = exclude_matches is not None and exclude_matches(rel[cut:])
                if hidden or excluded:
                    if fmt == _IFDIR and (not hidden or ignore.may_include_below(rel)) and (  # type: ignore[union-attr]
                            not excluded or exclude.may_include_below(rel[cut:])):  # type: ignore[union-attr]
                        mark = len(out)
                        walk(rel, path)
                        if len(out) > mark:  # something inside is kept: the directory comes too
                            out.insert(mark, _new(Entry, (rel, "dir", mode & 0o7777, st.st_uid, st.st_gid,
                                                          st.st_size, st[8], "", "", 0, (st.st_dev, st.st_ino))))
                    continue
                # st[8] is st_mtime in whole seconds, without int(float)'s cost
                if fmt == _IFREG:
                    sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                    hit = cache.get(rel)
                    digest = hit[1] if hit is not None and hit[0] == sig else hash_file(rel, path, st, sig)
                    add_seen(rel)
                    append(_new(Entry, (rel, "file", mode & 0o7777, st.st_uid, st.st_gid, sig[0], st[8], "", digest,
                                        0, (st.st_dev, sig[2]))))
                elif fmt == _IFDIR:
                    append(_new(Entry, (rel, "dir", mode & 0o7777, st.st_uid, st.st_gid, st.st_size, st[8], "", "",
                                        0, (st.st_dev, st.st_ino))))
                    walk(rel, path)
                else:
                    kind = kinds.get(fmt)
                    if kind is None:  # a socket: nothing a layer can hold
                        continue
                    append(_new(Entry, (rel, kind, mode & 0o7777, st.st_uid, st.st_gid, st.st_size, st[8],
                                        readlink(path) if fmt == _IFLNK else "", "",
                                        st.st_rdev if kind in ("char", "block") else 0, (st.st_dev, st.st_ino))))

        walk(top, f"{self._root}/{top}" if top else self._root)
        return out

    # --- hashing through the stat cache ------------------------------------------------------

    def _hash(self, rel: str, path: str, st: os.stat_result, sig: _Sig) -> str:
        try:
            digest = _hash_file(path, st.st_size)
        except OSError as e:
            raise ContextError(f"cannot read {rel} in the build context: {e.strerror}") from None
        self.hashed_files += 1
        assert self._cache is not None
        self._cache[rel] = (sig, digest)
        self._changed = True
        window = _RACY_COARSE_NS if st.st_mtime_ns % 1_000_000_000 == 0 else _RACY_NS
        if max(st.st_mtime_ns, st.st_ctime_ns) > time.time_ns() - window:
            self._racy.add(rel)
        else:
            self._racy.discard(rel)
        return digest

    def _load(self) -> dict[str, tuple[_Sig, str]]:
        """The stat cache file's entries; none when it is missing, damaged or another root's."""
        self._cache = {}
        if self.stat_cache is not None:
            try:
                with open(self.stat_cache, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            head = len(_CACHE_MAGIC)
            if data.startswith(_CACHE_MAGIC) and len(data) > head + 32:
                payload = memoryview(data)[head + 32:]
                if blake3.blake3(payload).digest() == data[head:head + 32]:
                    try:
                        root, entries = marshal.loads(payload)
                    except (EOFError, ValueError, TypeError):
                        root, entries = None, None
                    if root == os.path.abspath(self._root) and type(entries) is dict:
                        self._cache = entries
        self._loaded = len(self._cache)
        return self._cache

    def save(self) -> None:
        """Write the stat cache when it changed: the files read this run (entries for files
        not seen are dropped, so deleted ones do not pile up). Atomic: a crash leaves the old
        file or the new one."""
        if self.stat_cache is None or self._cache is None:
            return
        keep = self._seen - self._racy
        if not self._changed and len(keep) == self._loaded:
            return
        cache = self._cache
        payload = marshal.dumps((os.path.abspath(self._root), {rel: cache[rel] for rel in keep}))
        directory = self.stat_cache.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".statcache-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_CACHE_MAGIC)
                f.write(blake3.blake3(payload).digest())
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.stat_cache)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._loaded = len(keep)
        self._changed = False


def _not_found(what: str, rel: str) -> ContextError:
    return ContextError(f"{what} failed: file not found in build context or excluded by .dockerignore: "
                        f"stat {rel or '.'}: file does not exist")


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


def _hash_file(path: str, size: int) -> str:
    """blake3 of a file's content, read in 1 MiB pieces (threads hash the big ones)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if size <= _CHUNK:
            h = blake3.blake3()
            # a buffer the file's size (plus one, to see the end): os.read allocates what it is
            # asked for, and a 1 MiB allocation costs a small file more than reading it
            while chunk := os.read(fd, size + 1):
                h.update(chunk)
        else:
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            with open(fd, "rb", buffering=0, closefd=False) as f:
                while n := f.readinto(buf):
                    h.update(view[:n])
    finally:
        os.close(fd)
    return h.hexdigest()


def selection_digest(selection: Selection) -> str:
    """blake3 over what a COPY reads: for each match its source, its path and entry count,
    then every entry's path (below the match), type, mode, ids, link target, content digest
    and device number; never mtimes. Fields end in NUL (no path or link target holds one),
    records in a newline after a number, the source is length-prefixed."""
    h = blake3.blake3()
    for m in selection.matches:
        base = m.entry.rel
        cut = len(base) + 1 if base else 0
        e = m.entry
        rows = [f"M{len(m.source)}:{m.source}\0{base}\0{len(m.children) + 1}\n",
                f"\0{e.kind}\0{e.mode}\0{e.uid}\0{e.gid}\0{e.linkname}\0{e.digest}\0{e.rdev}\n"]
        rows.extend([f"{c.rel[cut:]}\0{c.kind}\0{c.mode}\0{c.uid}\0{c.gid}\0{c.linkname}\0{c.digest}\0{c.rdev}\n"
                     for c in m.children])
        h.update("".join(rows).encode("utf-8", "surrogateescape"))
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
