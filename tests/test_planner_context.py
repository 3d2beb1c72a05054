"""`.dockerignore` with Docker's pattern rules, and the context reader: what a COPY source
names, symlinks kept inside the root, the digest of exactly the files read (never mtimes), and
the stat cache that spares unchanged files a re-read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildpy.planner.context import ContextError, ContextReader, changed_files, selection_digest, selection_files
from buildpy.planner.dockerignore import Matcher, parse_patterns, read_patterns

# (patterns, path, excluded): moby/patternmatcher's and the docker docs' examples
MATCHES = [
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/temp", True),
    (["*/temp*"], "temp", False),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["*/*/temp*"], "somedir/temporary.txt", False),
    (["temp?"], "tempa", True),
    (["temp?"], "tempab", False),
    (["**/*.go"], "a/b/c.go", True),
    (["**/*.go"], "c.go", True),
    (["**"], "anything/at/all", True),
    (["dir/**"], "dir/a/b", True),
    (["dir/**"], "dir", False),
    (["**/dir"], "a/b/dir/file", True),  # a parent matches
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "CHANGES.md", True),
    (["!README.md", "*.md"], "README.md", True),  # the last matching rule wins
    (["secret/"], "secret/key", True),
    (["/abs"], "abs", True),
    (["./rel"], "rel", True),
    (["a/../b"], "b", True),
    (["[a-c]x"], "bx", True),
    (["[a-c]x"], "dx", False),
    (["[^a-c]x"], "dx", True),
    (["\\*x"], "*x", True),
    (["\\*x"], "ax", False),
    (["*"], "a/b", True),  # `a` matches, so everything below it is out
    (["a*", "!ab"], "ab/c", False),
    (["docs", "!docs/keep.md"], "docs/keep.md", False),
    (["docs", "!docs/keep.md"], "docs/other.md", True),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), MATCHES)
def test_patterns_as_docker_reads_them(patterns, path, excluded):
    assert Matcher(parse_patterns("\n".join(patterns))).matches(path) is excluded


def test_ignore_file_lines_are_cleaned():
    text = "\ufeff# comment\n  spaced  \n\n!  kept\n/leading\n./dot/../x\n"
    assert parse_patterns(text) == ["spaced", "!kept", "leading", "x"]


def test_exclusion_alone_is_an_error():
    from buildpy.planner.dockerignore import IgnoreError

    with pytest.raises(IgnoreError):
        Matcher(["!"])


def test_dockerfile_ignore_file_wins(tmp_path):
    (tmp_path / ".dockerignore").write_text("a\n")
    (tmp_path / "app.Dockerfile").write_text("FROM scratch\n")
    assert read_patterns(tmp_path, tmp_path / "app.Dockerfile") == ["a"]
    (tmp_path / "app.Dockerfile.dockerignore").write_text("b\n")
    assert read_patterns(tmp_path, tmp_path / "app.Dockerfile") == ["b"]
    assert read_patterns(tmp_path / "nothere", None) == []


def test_may_include_below_lets_a_walker_skip_or_enter():
    m = Matcher(["docs", "!docs/keep.md"])
    assert m.may_include_below("docs")
    assert not Matcher(["docs"]).may_include_below("docs")
    assert not m.may_include_below("other")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    for name, text in {"a.txt": "a", "b.txt": "b", "c.md": "c", "src/x.py": "x", "src/sub/y.py": "y",
                       "logs/1.log": "l"}.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def rels(selection) -> list[list[str]]:
    return [[m.entry.rel] + [c.rel for c in m.children] for m in selection.matches]


def test_sources_files_dirs_and_wildcards(ctx):
    r = ContextReader(ctx)
    assert rels(r.select(["a.txt"])) == [["a.txt"]]
    assert rels(r.select(["src"])) == [["src", "src/sub", "src/sub/y.py", "src/x.py"]]
    assert rels(r.select(["*.txt"])) == [["a.txt"], ["b.txt"]]
    assert rels(r.select(["/src/*/y.py"])) == [["src/sub/y.py"]]
    assert rels(r.select(["."]))[0][0] == ""


def test_missing_sources_are_errors_and_parent_navigation_stays_inside(ctx):
    r = ContextReader(ctx)
    with pytest.raises(ContextError, match="not found"):
        r.select(["nothere"])
    assert r.select(["*.none"]).matches == ()  # a wildcard may match nothing, as BuildKit allows
    # parent navigation is removed, as BuildKit's reference says: ../a.txt is the context's a.txt
    assert rels(r.select(["../a.txt"])) == [["a.txt"]]


def test_ignored_files_are_invisible(ctx):
    r = ContextReader(ctx, ignore=Matcher(["*.md", "logs"]))
    with pytest.raises(ContextError, match="not found"):
        r.select(["c.md"])
    everything = rels(r.select(["."]))[0]
    assert "c.md" not in everything and "logs" not in everything and "logs/1.log" not in everything
    assert "a.txt" in everything


def test_exclude_flag_is_relative_to_the_source(ctx):
    r = ContextReader(ctx)
    assert rels(r.select(["src"], excludes=["sub"])) == [["src", "src/x.py"]]


def test_symlinks_resolve_inside_the_root_never_outside(ctx, tmp_path):
    (tmp_path / "outside").write_text("host secret")
    os.symlink("/outside", ctx / "abs")  # absolute: the root is /
    os.symlink("../../outside", ctx / "rel")  # .. stops at the root
    os.symlink("src", ctx / "dirlink")
    r = ContextReader(ctx)
    with pytest.raises(ContextError):
        r.select(["abs"])
    with pytest.raises(ContextError):
        r.select(["rel"])
    assert rels(r.select(["dirlink/x.py"])) == [["src/x.py"]]
    # inside a copied directory a symlink stays a symlink
    children = {c.rel: c for c in r.select(["."]).matches[0].children}
    assert children["abs"].kind == "symlink" and children["abs"].linkname == "/outside"


def test_digest_follows_content_and_mode_not_mtime(ctx):
    def digest() -> str:
        return selection_digest(ContextReader(ctx).select(["."]))

    first = digest()
    os.utime(ctx / "a.txt", (1, 1))
    assert digest() == first
    (ctx / "a.txt").write_text("A")
    second = digest()
    assert second != first
    (ctx / "a.txt").chmod(0o600)
    assert digest() != second


def test_stat_cache_spares_unchanged_files_and_survives_garbage(ctx, tmp_path):
    cache = tmp_path / "cache"
    r = ContextReader(ctx, stat_cache=cache)
    files = selection_files(r.select(["."]))
    assert r.hashed_files == 6
    r.save()
    again = ContextReader(ctx, stat_cache=cache)
    assert selection_files(again.select(["."])) == files
    assert again.hashed_files == 0
    (ctx / "src/x.py").write_text("changed")
    third = ContextReader(ctx, stat_cache=cache)
    new = selection_files(third.select(["."]))
    assert third.hashed_files == 1
    assert changed_files(files, new) == ["src/x.py"]
    cache.write_bytes(b"garbage")
    assert selection_files(ContextReader(ctx, stat_cache=cache).select(["."])) == new
