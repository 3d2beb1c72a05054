"""`.dockerignore` as Docker reads it: moby/patternmatcher's tables (its own tests, ported), the
docker docs' examples, ignorefile.ReadAll's line cleaning, Go's filepath.Match (COPY wildcards),
and when a walker may skip a left-out directory (fsutil's FilterFS)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from buildpy.planner.dockerignore import IgnoreError, Matcher, glob_regex, has_wildcards, parse_patterns, read_patterns

# moby/patternmatcher's TestMatches: (pattern, path, excluded), each as one pattern
PATTERNMATCHER = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
]

# its multiPatternTests, and its single-test functions
PATTERNMATCHER_MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    ([], "/any/path/there", False),
    (["docs", "config", ""], "config", True),
    (["docs", "  !docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md  "], "docs/README.md", False),
]

# the docker docs' .dockerignore examples, and the cleaning rules
DOCS = [
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/temp", True),
    (["*/temp*"], "temp", False),
    (["*/temp*"], "a/b/temp", False),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["*/*/temp*"], "somedir/temporary.txt", False),
    (["temp?"], "tempa", True),
    (["temp?"], "tempab", False),
    (["temp?"], "temp", False),
    (["**/*.go"], "a/b/c.go", True),
    (["**/*.go"], "c.go", True),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "CHANGES.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
    (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
    (["!README.md", "*.md"], "README.md", True),  # the last matching pattern wins
    (["/abs"], "abs", True),
    (["./rel"], "rel", True),
    (["a/../b"], "b", True),
    (["secret/"], "secret/key", True),  # a trailing slash is cleaned away; the dir's files go too
    (["*"], "a/b", True),  # `a` matches, so everything below it is out
    (["a*", "!ab"], "ab/c", False),
    (["docs", "!docs/keep.md"], "docs/other.md", True),
    (["[^a-c]x"], "dx", True),
    (["[!a]x"], "!x", True),  # `!` in a class is a plain member (Go's regexp)
    (["[!a]x"], "bx", False),
]

# Docker quirks kept on purpose: patternmatcher's escape bitmap only holds characters below 64,
# so `|`, `{` and `}` reach Go's regexp raw
QUIRKS = [
    (["*.{js,ts}"], "app.{js,ts}", True),  # no brace expansion: the braces are literal
    (["*.{js,ts}"], "app.js", False),
    (["a|b"], "a|b", True),  # no wildcard: compared as a string
    (["*.log|"], "anything", True),  # "^[^/]*\.log|$": an alternation whose `$` matches every path
    (["x?{2}"], "xyy", True),  # a repetition of `?`'s character
    (["x?{2}"], "xy", False),
]


@pytest.mark.parametrize(("pattern", "path", "excluded"), PATTERNMATCHER)
def test_patternmatcher_table(pattern, path, excluded):
    assert Matcher([pattern]).matches(path) is excluded


@pytest.mark.parametrize(("patterns", "path", "excluded"), PATTERNMATCHER_MULTI + QUIRKS)
def test_pattern_lists(patterns, path, excluded):
    assert Matcher(patterns).matches(path) is excluded


@pytest.mark.parametrize(("lines", "path", "excluded"), DOCS)
def test_dockerignore_files(lines, path, excluded):
    assert Matcher(parse_patterns("\n".join(lines))).matches(path) is excluded


def test_only_the_ignore_file_drops_a_leading_slash():
    # COPY --exclude patterns go to patternmatcher as written: "/abs" never matches a relative path
    assert Matcher(["/abs"]).matches("abs") is False
    assert Matcher(parse_patterns("/abs")).matches("abs") is True


def test_patterns_read_from_a_file_keep_their_meaning():
    text = "\n".join(["*.md", "!README*.md", "README-secret.md"])
    m = Matcher(parse_patterns(text))
    assert [m.matches(p) for p in ("a.md", "README.md", "README-secret.md", "src/a.md")] == [True, False, True, False]


def test_a_pattern_repeated_after_an_exception_is_decided_as_buildkits_walker_decides():
    # fsutil walks down from the root carrying which patterns matched each parent; a pattern
    # not tried at the parent (the answer was already "out") is not inherited
    m = Matcher(["a", "!a/x", "a"])
    assert m.matches("a") is True
    assert m.matches("a/x") is False
    assert m.matches("a/y") is True


def test_exclusions_and_emptiness():
    assert Matcher(["a", "!b"]).exclusions is True
    assert Matcher(["a", "b"]).exclusions is False
    assert not Matcher(["", "  "])
    assert Matcher([" x "]).patterns == ("x",)


@pytest.mark.parametrize("pattern", ["!", "[", "\\", "[]a]", "[x-]", "[-x]", "[a-b-c]", "[^bc", "a[", "a/b[", "**/["])
def test_malformed_patterns_are_refused(pattern):
    with pytest.raises(IgnoreError) as e:
        Matcher([pattern])
    assert "\n" not in str(e.value)


def test_a_pattern_go_compiles_only_when_tried_fails_only_then():
    # moby/moby#52203: "[Local-Only]" passes filepath.Match but not regexp ("l-O" runs backwards)
    m = Matcher(["[Local-Only]/"])
    with pytest.raises(IgnoreError, match="Local-Only"):
        m.matches("x")
    with pytest.raises(IgnoreError):
        m.matches("x")  # and again: nothing half-remembered
    # an exception is only tried once something is out: here nothing ever is
    assert Matcher(["![Local-Only]"]).matches("x") is False


# --- the ignore file --------------------------------------------------------------------------


def test_read_all_cleans_lines_as_moby_does():
    # ignorefile's TestReadAll
    text = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    assert parse_patterns(text) == ["test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path", "!", "!"]


def test_read_all_bom_crlf_comments_and_cleaning():
    text = "\ufeff# comment\r\n  spaced  \r\n\r\n!  kept\n/leading\n./dot/../x\n # not a comment\n//twice\n/\n"
    assert parse_patterns(text) == ["spaced", "!kept", "leading", "x", "# not a comment", "twice", "/"]
    assert parse_patterns("a\x1c\n") == ["a\x1c"]  # Go's TrimSpace keeps \x1c, str.strip would not


def test_the_dockerfiles_own_ignore_file_wins(tmp_path: Path):
    assert read_patterns(tmp_path / "nothere", None) == []
    (tmp_path / "app.Dockerfile").write_text("FROM scratch\n")
    assert read_patterns(tmp_path, tmp_path / "app.Dockerfile") == []
    (tmp_path / ".dockerignore").write_text("a\n")
    assert read_patterns(tmp_path, tmp_path / "app.Dockerfile") == ["a"]
    (tmp_path / "app.Dockerfile.dockerignore").write_text("b\n")
    assert read_patterns(tmp_path, tmp_path / "app.Dockerfile") == ["b"]
    assert read_patterns(tmp_path, tmp_path / "Dockerfile") == ["a"]
    # beside the Dockerfile, wherever that is
    other = tmp_path / "build"
    other.mkdir()
    (other / "Dockerfile").write_text("FROM scratch\n")
    (other / "Dockerfile.dockerignore").write_text("c\n")
    assert read_patterns(tmp_path, other / "Dockerfile") == ["c"]


# --- skipping left-out directories -------------------------------------------------------------


def test_may_include_below_is_fsutils_check():
    m = Matcher(["docs", "!docs/keep.md"])
    assert m.may_include_below("docs")
    assert not m.may_include_below("other")
    assert not m.may_include_below("do")  # a prefix of a name is not a parent
    assert not Matcher(["docs"]).may_include_below("docs")  # no exception at all
    # a trailing "/**" or "/*" is dropped first
    m = Matcher(["*", "!a/b/**"])
    assert m.may_include_below("a") and m.may_include_below("a/b") and not m.may_include_below("c")
    # an exception with a wildcard could bring back anything: every directory is entered
    m = Matcher(["*", "!**/keep"])
    assert m.may_include_below("x") and m.may_include_below("x/y")


# --- Go's filepath.Match, for COPY wildcards ---------------------------------------------------

# Go's path/filepath TestMatch table: (pattern, name, matched, bad pattern)
FILEPATH_MATCH = [
    ("abc", "abc", True, False),
    ("*", "abc", True, False),
    ("*c", "abc", True, False),
    ("a*", "a", True, False),
    ("a*", "abc", True, False),
    ("a*", "ab/c", False, False),
    ("a*/b", "abc/b", True, False),
    ("a*/b", "a/c/b", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False, False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True, False),
    ("a*b?c*x", "abxbbxdbxebxczzy", False, False),
    ("ab[c]", "abc", True, False),
    ("ab[b-d]", "abc", True, False),
    ("ab[e-g]", "abc", False, False),
    ("ab[^c]", "abc", False, False),
    ("ab[^b-d]", "abc", False, False),
    ("ab[^e-g]", "abc", True, False),
    ("a\\*b", "a*b", True, False),
    ("a\\*b", "ab", False, False),
    ("a?b", "a☺b", True, False),
    ("a[^a]b", "a☺b", True, False),
    ("a???b", "a☺b", False, False),
    ("a[^a][^a][^a]b", "a☺b", False, False),
    ("[a-ζ]*", "α", True, False),
    ("*[a-ζ]", "A", False, False),
    ("a?b", "a/b", False, False),
    ("a*b", "a/b", False, False),
    ("[\\]a]", "]", True, False),
    ("[\\-]", "-", True, False),
    ("[x\\-]", "x", True, False),
    ("[x\\-]", "-", True, False),
    ("[x\\-]", "z", False, False),
    ("[\\-x]", "x", True, False),
    ("[\\-x]", "-", True, False),
    ("[\\-x]", "a", False, False),
    ("[]a]", "]", False, True),
    ("[-]", "-", False, True),
    ("[x-]", "x", False, True),
    ("[-x]", "x", False, True),
    ("\\", "a", False, True),
    ("[a-b-c]", "a", False, True),
    ("[", "a", False, True),
    ("[^", "a", False, True),
    ("[^bc", "a", False, True),
    ("a[", "a", False, True),
    ("a[", "ab", False, True),
    ("a[", "x", False, True),
    ("a/b[", "x", False, True),
    ("*x", "xxx", True, False),
    ("[!a]", "!", True, False),  # only `^` negates in Go
    ("[z-a]", "m", False, False),  # a reversed range matches nothing (no error)
]


@pytest.mark.parametrize(("pattern", "name", "matched", "bad"), FILEPATH_MATCH)
def test_glob_regex_is_gos_filepath_match(pattern, name, matched, bad):
    regex = glob_regex(pattern)
    if bad:
        assert regex is None
    else:
        assert regex is not None and bool(re.match(regex, name)) is matched


@pytest.mark.parametrize(("text", "wild"), [("a*", True), ("a?", True), ("[ab]", True), ("a\\*b", False),
                                            ("plain.txt", False), ("a\\\\*", True), ("x]", False)])
def test_has_wildcards_as_fsutil_counts_them(text, wild):
    assert has_wildcards(text) is wild


# --- speed -------------------------------------------------------------------------------------


def test_five_thousand_paths_match_in_a_few_milliseconds():
    paths = [f"pkg{d:03d}/{'sub/' if d % 2 else ''}file{f:02d}.py" for d in range(100) for f in range(50)]
    patterns = ["*.md", "!README.md", "**/tmp", "pkg00*/sub", "docs", "**/__pycache__"]
    best = float("inf")
    for _ in range(3):
        m = Matcher(patterns)
        start = time.thread_time()
        hits = [m.matches(p) for p in paths]
        best = min(best, time.thread_time() - start)
    assert sum(hits) == 250  # pkg001, 003, ..., 009 have a sub/: out with its 50 files
    # about 1 µs a path on this project's machines; a pattern list walked per path took 60 ms
    assert best < 0.03, f"{best * 1000:.1f} ms"
