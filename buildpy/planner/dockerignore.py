"""`.dockerignore` with Docker's rules: which file is read and how its lines are cleaned
(moby/patternmatcher's ignorefile.ReadAll), how a pattern is checked and compiled
(patternmatcher.New and compile: exact, prefix, suffix or regular-expression matches), and how a
path is decided the way BuildKit's context walker decides it (fsutil's FilterFS: each pattern
that matched a parent directory counts as matching below it, the last matching pattern wins,
`!` re-includes), including when an excluded directory may be skipped whole.

Also Go's `filepath.Match` syntax, shared with the context reader's COPY wildcards.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from pathlib import Path


class IgnoreError(Exception):
    """A pattern Docker refuses. One line."""

    user_facing = True


# unicode.IsSpace, which Go's strings.TrimSpace uses (str.strip would also take \x1c-\x1f)
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000"


def go_clean(path: str) -> str:
    """Go's filepath.Clean (on "/"): normpath, except that a leading "//" is one "/"."""
    if not path:
        return "."
    out = posixpath.normpath(path)
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


# --- the ignore file ---------------------------------------------------------------------------


def read_patterns(context: Path, dockerfile: Path | None = None) -> list[str]:
    """The patterns that apply: `<Dockerfile name>.dockerignore` beside the Dockerfile wins over
    the context's `.dockerignore`; none when neither exists."""
    candidates = []
    if dockerfile is not None:
        candidates.append(dockerfile.parent / f"{dockerfile.name}.dockerignore")
    candidates.append(context / ".dockerignore")
    for path in candidates:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as e:
            raise IgnoreError(f"cannot read {path}: {e.strerror}") from None
        return parse_patterns(data.decode("utf-8", "surrogateescape"))
    return []


def parse_patterns(text: str) -> list[str]:
    """ignorefile.ReadAll: a BOM dropped, `#` lines and blank lines skipped, each pattern
    trimmed and cleaned, a leading `/` removed (patterns are relative to the context)."""
    out: list[str] = []
    # bufio.ScanLines: split on "\n" only, one trailing "\r" dropped
    for n, line in enumerate(text.split("\n")):
        if line.endswith("\r"):
            line = line[:-1]
        if n == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):  # before trimming: " # x" is a pattern
            continue
        pattern = line.strip(_GO_SPACE)
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip(_GO_SPACE)
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


# --- Go's filepath.Match syntax ----------------------------------------------------------------


def has_wildcards(component: str) -> bool:
    """fsutil's containsWildcards: `*`, `?` or `[` not escaped by a backslash."""
    i = 0
    n = len(component)
    while i < n:
        ch = component[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def _glob_char(pattern: str, i: int) -> tuple[str, int] | None:
    """filepath's getEsc: one class character, maybe escaped; None where Go says bad pattern."""
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        return None
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            return None
    ch = pattern[i]
    if "\udc80" <= ch <= "\udcff":  # an undecodable byte: utf8.RuneError to Go
        return None
    i += 1
    if i >= n:  # a class must still be closed
        return None
    return ch, i


def glob_regex(pattern: str) -> str | None:
    """A Go filepath.Match pattern as a Python regular expression for `re.match` (anchored at
    both ends), or None when Go would answer ErrBadPattern."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "\\":
            if i + 1 >= n:
                return None
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif ch == "[":
            i += 1
            negated = i < n and pattern[i] == "^"
            if negated:
                i += 1
            items: list[str] = []
            count = 0
            while True:
                if i < n and pattern[i] == "]" and count > 0:
                    i += 1
                    break
                got = _glob_char(pattern, i)
                if got is None:
                    return None
                lo, i = got
                hi = lo
                if pattern[i] == "-":
                    got = _glob_char(pattern, i + 1)
                    if got is None:
                        return None
                    hi, i = got
                count += 1
                if lo <= hi:  # Go accepts a reversed range; it matches nothing
                    items.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
            body = "".join(items)
            if body:
                out.append(f"[^{body}]" if negated else f"[{body}]")
            else:
                out.append("(?s:.)" if negated else "(?!)")
        else:
            out.append(re.escape(ch))
            i += 1
    out.append(r"\Z")
    return "".join(out)


# --- patternmatcher's compile ------------------------------------------------------------------

_EXACT, _PREFIX, _SUFFIX, _REGEX = range(4)
# patternmatcher's escape bitmap keeps only characters below 64: `|`, `{` and `}` reach the
# regular expression raw (an alternation, a repetition), as they do in Docker
_SHOULD_ESCAPE = frozenset(".+()$")


def _go_regex(pattern: str) -> tuple[int, str]:
    """patternmatcher's Pattern.compile: the match type, and for regexp matches the Go regular
    expression it builds (user text copied in, `.+()$` escaped)."""
    regex = "^"
    kind = _EXACT
    i = 0
    n = len(pattern)
    first = True
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":  # "**/" is "**"
                    i += 1
                if i >= n:
                    if kind == _EXACT:
                        kind = _PREFIX
                    else:
                        regex += ".*"
                        kind = _REGEX
                else:
                    regex += "(.*/)?"
                    kind = _REGEX
                if first:
                    kind = _SUFFIX
            else:
                regex += "[^/]*"
                kind = _REGEX
        elif ch == "?":
            regex += "[^/]"
            kind = _REGEX
        elif ch in _SHOULD_ESCAPE:
            regex += "\\" + ch
        elif ch == "\\":
            if i < n:
                regex += "\\" + pattern[i]
                i += 1
                kind = _REGEX
            else:
                regex += "\\"
        elif ch in "[]":
            regex += ch
            kind = _REGEX
        else:
            regex += ch
        first = False
    return kind, regex + "$"


class _Unsupported(Exception):
    pass


# Go's regexp/syntax, as far as patterns can reach it: Perl and POSIX classes are ASCII there
_PERL = {"d": "0-9", "s": "\\t\\n\\f\\r ", "w": "0-9A-Za-z_"}
_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_CONTROL = {"a": "\a", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _complement(body: str) -> str:
    """The ranges of a class body of ASCII ranges (as in `_POSIX`) that it leaves out."""
    members = {c for c in map(chr, range(128)) if re.fullmatch(f"[{body}]", c)}
    out = []
    start = None
    for code in range(129):
        outside = code < 128 and chr(code) not in members
        if outside and start is None:
            start = code
        elif not outside and start is not None:
            out.append(f"\\x{start:02x}-\\x{code - 1:02x}")
            start = None
    return "".join(out) + "\\x80-\\U0010ffff"


def _go_escape(rx: str, i: int) -> tuple[str, int]:
    """regexp/syntax parseEscape at rx[i] (just past the backslash): the character it stands for."""
    if i >= len(rx):
        raise _Unsupported("trailing backslash")
    ch = rx[i]
    i += 1
    if ch.isascii() and not ch.isalnum():
        return ch, i
    if ch in _CONTROL:
        return _CONTROL[ch], i
    if "0" <= ch <= "7":
        if ch != "0" and (i >= len(rx) or not "0" <= rx[i] <= "7"):
            raise _Unsupported(f"invalid escape sequence: \\{ch}")  # a back-reference to Go
        value = int(ch)
        for _ in range(2):
            if i < len(rx) and "0" <= rx[i] <= "7":
                value = value * 8 + int(rx[i])
                i += 1
        return chr(value), i
    if ch == "x":
        if rx.startswith("{", i):
            j = rx.find("}", i)
            digits = rx[i + 1:j] if j > 0 else ""
            if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits) or int(digits, 16) > 0x10FFFF:
                raise _Unsupported("invalid escape sequence: \\x")
            return chr(int(digits, 16)), j + 1
        digits = rx[i:i + 2]
        if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise _Unsupported("invalid escape sequence: \\x")
        return chr(int(digits, 16)), i + 2
    raise _Unsupported(f"invalid escape sequence: \\{ch}")


def _py_class(rx: str, i: int) -> tuple[str, int]:
    """A Go character class at rx[i] == "[" as a Python one (each member escaped, so Python's
    own nested-set syntax never applies)."""
    n = len(rx)
    i += 1
    negated = i < n and rx[i] == "^"
    if negated:
        i += 1
    items: list[str] = []
    first = True
    while first or i >= n or rx[i] != "]":
        if i >= n:
            raise _Unsupported("missing closing ]")
        first = False
        if rx.startswith("[:", i):
            j = rx.find(":]", i + 2)
            if j >= 0:
                name = rx[i + 2:j]
                body = _POSIX.get(name.removeprefix("^"))
                if body is None:
                    raise _Unsupported(f"invalid character class range: [:{name}:]")
                items.append(_complement(body) if name.startswith("^") else body)
                i = j + 2
                continue
        if rx[i] == "\\" and i + 1 < n and rx[i + 1] in "dDsSwWpP":
            letter = rx[i + 1]
            if letter in "pP":
                raise _Unsupported("unicode classes (\\p) are not supported")
            items.append(_PERL[letter] if letter.islower() else "\\" + letter)
            i += 2
            continue
        lo, i = _go_escape(rx, i + 1) if rx[i] == "\\" else (rx[i], i + 1)
        hi = lo
        if i + 1 < n and rx[i] == "-" and rx[i + 1] != "]":
            hi, i = _go_escape(rx, i + 2) if rx[i + 1] == "\\" else (rx[i + 1], i + 2)
            if hi < lo:
                raise _Unsupported(f"invalid character class range: {lo}-{hi}")
        items.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    return ("[^" if negated else "[") + "".join(items) + "]", i + 1


_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")


def _py_regex(rx: str) -> str:
    """The Go regular expression `_go_regex` built, in Python's syntax (compiled with re.ASCII,
    searched like Go's MatchString: a raw `|` splits the whole expression)."""
    out: list[str] = []
    atom = -1  # where in `out` the last atom starts (-1: none, as after `|`)
    repeated = False  # the last atom carries a repetition: another one is an error to Go
    i = 0
    n = len(rx)
    while i < n:
        ch = rx[i]
        start = len(out)
        if rx.startswith("(.*/)?", i):  # `_go_regex`'s own group: user parentheses arrive escaped
            out.append("(?:.*/)?")
            atom, repeated = start, True
            i += 6
            continue
        if ch == "\\":
            nxt = rx[i + 1] if i + 1 < n else ""
            if nxt in ("A", "b", "B"):
                out.append("\\" + nxt)
                i += 2
            elif nxt == "z":
                out.append(r"\Z")
                i += 2
            elif nxt and nxt in "dDsSwW":
                body = _PERL[nxt.lower()]
                out.append(f"[{body}]" if nxt.islower() else f"[^{body}]")
                i += 2
            elif nxt and nxt in "CQEpPZ":
                raise _Unsupported(f"\\{nxt} is not supported")
            else:
                char, i = _go_escape(rx, i + 1)
                out.append(re.escape(char))
        elif ch == "[":
            cls, i = _py_class(rx, i)
            out.append(cls)
        elif ch == "$":  # only at the end: Go's `$` is the end of the text, Python's `\Z`
            out.append(r"\Z")
            i += 1
        elif ch == "|":
            out.append("|")
            atom, repeated = -1, False
            i += 1
            continue
        elif ch in "*?":  # only `_go_regex`'s own, after its `[^/]` or `.`
            out.append(ch)
            repeated = True
            i += 1
            continue
        elif ch == "{":
            rep = _REPEAT.match(rx, i)
            if rep is None:  # not a repetition: Go takes the brace literally
                out.append(r"\{")
                i += 1
            else:
                low = int(rep.group(1))
                high = low if rep.group(2) is None else (int(rep.group(3)) if rep.group(3) else -1)
                if atom < 0:
                    raise _Unsupported(f"missing argument to repetition operator: {rep.group(0)}")
                if repeated:
                    raise _Unsupported(f"invalid nested repetition operator: {rep.group(0)}")
                if low > 1000 or high > 1000 or -1 < high < low:
                    raise _Unsupported(f"invalid repeat count: {rep.group(0)}")
                out[atom:] = ["(?:" + "".join(out[atom:]) + ")" + rep.group(0)]
                repeated = True
                i = rep.end()
                continue
        elif ch in "]}":
            out.append("\\" + ch)
            i += 1
        else:
            out.append(ch)
            i += 1
        atom, repeated = start, False
    return "".join(out)


class _Compiled:
    """One pattern as patternmatcher matches it: a string test for its exact, prefix and
    suffix kinds, a Python regular expression for the rest."""

    __slots__ = ("kind", "text", "regex")

    def __init__(self, pattern: str) -> None:
        self.kind, go = _go_regex(pattern)
        self.regex = ""
        if self.kind == _EXACT:
            self.text = pattern
        elif self.kind == _PREFIX:
            self.text = pattern[:-2]  # less the trailing "**"
        elif self.kind == _SUFFIX:
            self.text = pattern[2:]  # less the leading "**"
        else:
            self.text = ""
            self.regex = _py_regex(go)
            re.compile(self.regex, re.ASCII)


def _run_test(run: Sequence[_Compiled]) -> Callable[[str], object]:
    """One test for consecutive patterns of the same sign: whether any of them matches."""
    exact = {c.text for c in run if c.kind == _EXACT}
    # "**/foo" also matches "foo" itself
    exact.update(c.text[1:] for c in run if c.kind == _SUFFIX and c.text.startswith("/"))
    prefixes = tuple(c.text for c in run if c.kind == _PREFIX)
    suffixes = tuple(c.text for c in run if c.kind == _SUFFIX)
    regexes = [c.regex for c in run if c.kind == _REGEX]
    exact_set = frozenset(exact)
    # one expression, no nested calls: this runs for every path of the context
    if regexes:
        regex = re.compile("|".join(f"(?:{r})" for r in regexes), re.ASCII).search
        return lambda rel: rel in exact_set or rel.startswith(prefixes) or rel.endswith(suffixes) or regex(rel)
    return lambda rel: rel in exact_set or rel.startswith(prefixes) or rel.endswith(suffixes)


def _raiser(message: str) -> Callable[[str], object]:
    def fail(_rel: str) -> object:
        raise IgnoreError(message)

    return fail


# --- the matcher -------------------------------------------------------------------------------


class Matcher:
    """Which paths a pattern list (`.dockerignore`, or COPY's `--exclude`) leaves out.

    Patterns are compiled once, consecutive patterns of the same sign into one test: only where
    the sign changes does a decision take another step. Decisions for directories are
    remembered, so a walker pays one step per path."""

    def __init__(self, patterns: Sequence[str]) -> None:
        cleaned: list[str] = []
        rules: list[tuple[bool, _Compiled | str]] = []  # (exception, compiled or an error)
        for raw in patterns:
            p = raw.strip(_GO_SPACE)
            if not p:
                continue
            p = go_clean(p)
            exception = p[0] == "!"
            if exception:
                if len(p) == 1:
                    raise IgnoreError('illegal exclusion pattern: "!"')
                p = p[1:]
            if glob_regex(p) is None:  # patternmatcher.New checks with filepath.Match
                raise IgnoreError(f"bad pattern {p!r}: syntax error in pattern")
            cleaned.append("!" + p if exception else p)
            try:
                rules.append((exception, _Compiled(p)))
            except (_Unsupported, re.error) as e:
                # Go fails at match time, and only if the pattern is ever tried
                rules.append((exception, f"bad pattern {p!r}: {e}"))
        self.patterns: tuple[str, ...] = tuple(cleaned)
        self._exclusions = any(p.startswith("!") for p in cleaned)
        # runs of same-sign patterns: to the walker's rules a run acts as one pattern
        groups: list[tuple[bool, Callable[[str], object]]] = []
        run: list[_Compiled] = []
        run_sign = False
        for exception, compiled in rules:
            if run and (exception != run_sign or isinstance(compiled, str)):
                groups.append((run_sign, _run_test(run)))
                run = []
            if isinstance(compiled, str):
                groups.append((exception, _raiser(compiled)))
            else:
                run.append(compiled)
                run_sign = exception
        if run:
            groups.append((run_sign, _run_test(run)))
        self._groups = tuple(groups)
        # most paths match nothing: with no parent matched and no plain pattern matching, no
        # exception is tried either, so one test answers (when no plain pattern is broken)
        plain = [c for exception, c in rules if not exception]
        self._no_plain_match: Callable[[str], object] | None = None
        if self._exclusions and plain and not any(isinstance(c, str) for c in plain):
            self._no_plain_match = _run_test(plain)  # type: ignore[arg-type]
        self._single = groups[0][1] if len(groups) == 1 and not groups[0][0] else None
        self._memo: dict[str, int] = {}
        # fsutil's FilterFS: with only literal exceptions, an excluded directory is entered
        # when an exception (less a trailing "/**" or "/*") lies below it
        exceptions = [_without_trailing_glob(p[1:]) for p in cleaned if p.startswith("!")]
        self._literal_exceptions = not any(any(c in "*[]?^\\" for c in p) for p in exceptions)
        self._exception_dirs = tuple(p + "/" for p in exceptions)

    def __bool__(self) -> bool:
        return bool(self._groups)

    def __repr__(self) -> str:
        return f"Matcher({list(self.patterns)!r})"

    @property
    def exclusions(self) -> bool:
        """Whether any pattern is an exception (`!`)."""
        return self._exclusions

    def matches(self, rel: str) -> bool:
        """Whether `rel` (clean, relative, "/"-separated: "a/b/c") is left out: it or a parent
        matches, the last matching pattern winning. This is BuildKit's walker's answer
        (MatchesUsingParentResults from the root down), which equals MatchesOrParentMatches
        except where a pattern repeats after an exception (["a", "!a/x", "a"] keeps a/x)."""
        state = self._memo.get(rel)
        if state is None:
            if not self._groups:
                return False
            state = self._simple(rel) if self._single is not None else self._state(rel)
        return bool(state & 1)

    def _simple(self, rel: str) -> int:
        # one run of plain patterns: left out when a parent was, or when one matches
        cut = rel.rfind("/")
        if cut > 0:
            head = rel[:cut]
            up = self._memo.get(head)
            if up is None:
                # only directories are remembered: a context's files would cost memory for nothing
                up = self._memo[head] = self._simple(head)
            if up:
                return 1
        return 1 if self._single(rel) else 0  # type: ignore[misc]

    def _state(self, rel: str) -> int:
        """Bit 0: left out; bit n+1: run n matched here or at a parent (fsutil's MatchInfo)."""
        cut = rel.rfind("/")
        inherited = 0
        if cut > 0:
            head = rel[:cut]
            inherited = self._memo.get(head)  # type: ignore[assignment]
            if inherited is None:
                inherited = self._memo[head] = self._state(head)
        if not inherited and self._no_plain_match is not None and not self._no_plain_match(rel):
            return 0
        matched = False
        state = 0
        bit = 2
        for exception, match in self._groups:
            # a run is tried only when it could change the answer; one that matched a parent
            # counts as matching here
            if inherited & bit or (exception == matched and match(rel)):
                state |= bit
                matched = not exception
            bit <<= 1
        return state | matched

    def may_include_below(self, rel_dir: str) -> bool:
        """Whether a walker must enter the left-out directory `rel_dir` because an exception
        could bring back something inside it (fsutil's FilterFS check)."""
        if not self._exclusions:
            return False
        if not self._literal_exceptions:
            return True
        prefix = rel_dir + "/"
        return any(p.startswith(prefix) for p in self._exception_dirs)


def _without_trailing_glob(pattern: str) -> str:
    return pattern.removesuffix("/**").removesuffix("/*")
