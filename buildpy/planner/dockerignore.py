"""`.dockerignore` with Docker's rules (moby/patternmatcher and its ignorefile reader): which
file is read, how each line is cleaned, how a pattern becomes a regular expression, and how a
path is excluded when it or one of its parents matches (the last matching pattern wins; `!`
re-includes).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

_SPECIAL = ".+()|{}$"


class IgnoreError(Exception):
    user_facing = True


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
    """ignorefile.ReadAll: comments and blank lines dropped, each pattern trimmed and cleaned,
    a leading `/` removed (patterns are relative to the context)."""
    out: list[str] = []
    for n, line in enumerate(text.splitlines()):
        if n == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = posixpath.normpath(pattern)
            if pattern.startswith("//"):
                pattern = "/" + pattern.lstrip("/")
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """patternmatcher's compile: `**` any number of dirs, `*` and `?` within one, `\\` escapes."""
    regex = "^"
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                if i >= n:
                    regex += ".*"
                else:
                    regex += "(.*/)?"
            else:
                regex += "[^/]*"
        elif ch == "?":
            regex += "[^/]"
        elif ch in _SPECIAL:
            regex += "\\" + ch
        elif ch == "\\":
            if i < n:
                regex += "\\" + pattern[i]
                i += 1
            else:
                regex += "\\\\"
        elif ch == "[":
            # a Go character class: `^` negates, as `!` does in Python's fnmatch
            j = pattern.find("]", i + 1 if i < n and pattern[i] in "^!" else i)
            if j < 0:
                raise IgnoreError(f"bad .dockerignore pattern {pattern!r}: unterminated [")
            body = pattern[i:j]
            if body.startswith("^") or body.startswith("!"):
                body = "^" + body[1:]
            regex += "[" + body + "]"
            i = j + 1
        else:
            regex += re.escape(ch) if ch in "^[]" else ch
    regex += "$"
    try:
        return re.compile(regex, re.DOTALL)
    except re.error as e:
        raise IgnoreError(f"bad .dockerignore pattern {pattern!r}: {e}") from None


class Matcher:
    """Decides which context paths `.dockerignore` (or `--exclude`) leaves out."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.rules: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in patterns:
            p = raw.strip()
            if not p:
                continue
            exclusion = p.startswith("!")
            if exclusion:
                p = p[1:]
                if not p:
                    raise IgnoreError('illegal exclusion pattern: "!"')
            p = posixpath.normpath(p)
            self.rules.append((exclusion, compile_pattern(p), p))
        self.exclusions = any(ex for ex, _r, _p in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def matches(self, rel: str) -> bool:
        """Whether `rel` ("a/b/c") is excluded: it or a parent matches, the last rule winning."""
        matched = False
        parent = posixpath.dirname(rel)
        parents = parent.split("/") if parent else []
        for exclusion, regex, _p in self.rules:
            if exclusion != matched:
                continue
            hit = regex.match(rel) is not None
            if not hit and parents:
                for i in range(1, len(parents) + 1):
                    if regex.match("/".join(parents[:i])):
                        hit = True
                        break
            if hit:
                matched = not exclusion
        return matched

    def may_include_below(self, rel_dir: str) -> bool:
        """Whether some `!` rule could re-include a path inside the excluded dir `rel_dir`, so a
        walker must look inside it (as Docker's walker checks before skipping a dir)."""
        if not self.exclusions:
            return False
        prefix = rel_dir + "/"
        for exclusion, _r, pattern in self.rules:
            if not exclusion:
                continue
            literal = re.split(r"[*?\[\\]", pattern, maxsplit=1)[0]
            if literal.startswith(prefix) or prefix.startswith(literal) or literal == "":
                return True
        return False
