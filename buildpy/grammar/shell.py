"""Expansion of Dockerfile words, exactly as BuildKit's shell lexer does it.

This module owns everything BuildKit's `frontend/dockerfile/shell/lex.go` does to a word before an
instruction sees it: `$name` and `${name...}` substitution with every modifier BuildKit knows
(`:-  -  :+  +  :?  ?  #  ##  %  %%  /  //`), removal of single and double quotes, the escape
character (`\\` or a backtick), word splitting of unquoted expansions (`expand_words`), and the
record of which variables were found and which were not (`expand_word_tracked`, for the
UndefinedVar check).

BuildKit's behaviour is the specification, quirks included; where it deviates from a real shell
(or from good sense) a comment says so, so nobody "fixes" it into incompatibility.

Environment names compare case-sensitively (BuildKit's Unix rule). Every failure raises
`ExpansionError` with BuildKit's wording: `failed to process "WORD": REASON`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

from buildpy.grammar.ast import go_quote
from buildpy.grammar.errors import ExpansionError

__all__ = ["Expansion", "expand_word", "expand_words", "expand_word_tracked"]


@dataclass(frozen=True)
class Expansion:
    """An expanded word and the variables it looked up: found (`matched`) or not (`unmatched`)."""

    result: str
    matched: frozenset[str]
    unmatched: frozenset[str]


def expand_word(
    word: str,
    env: Mapping[str, str],
    escape: str = "\\",
    *,
    skip_unset: bool = False,
    raw_quotes: bool = False,
    raw_escapes: bool = False,
    skip_quotes: bool = False,
) -> str:
    """`word` with variables substituted and quotes and escapes removed (BuildKit `ProcessWord`).

    skip_unset leaves references to unset variables as written; raw_quotes keeps the quote
    characters; raw_escapes keeps the escape characters at the top level of the word;
    skip_quotes treats quotes as ordinary characters (BuildKit's `SkipProcessQuotes`, used when
    expanding heredoc bodies of COPY/ADD).
    """
    if "$" not in word and escape not in word and "'" not in word and '"' not in word:
        if "\ufeff" not in word:
            return word
    elif escape not in word and "'" not in word and '"' not in word:
        simple = _expand_simple(word, env, skip_unset, None)
        if simple is not None:
            return simple
    lexer = _Lexer(word, env, escape, skip_unset, raw_quotes, skip_quotes)
    return lexer.run(lambda: lexer.scan_until(None, raw_escapes))


def expand_words(
    word: str,
    env: Mapping[str, str],
    escape: str = "\\",
    *,
    skip_unset: bool = False,
    raw_quotes: bool = False,
    raw_escapes: bool = False,
    skip_quotes: bool = False,
) -> list[str]:
    """`word` expanded and split into words at unquoted white space (BuildKit `ProcessWords`).

    Spaces produced by an unquoted `$` expansion split too; quoted and escaped ones do not.
    Options as for `expand_word`.
    """
    if (
        "$" not in word
        and escape not in word
        and "'" not in word
        and '"' not in word
        and "<" not in word
        and "\ufeff" not in word
    ):
        return [w for w in _GO_SPACE_RUN.split(word) if w]
    lexer = _Lexer(word, env, escape, skip_unset, raw_quotes, skip_quotes)
    return lexer.run(lambda: lexer.scan_words(raw_escapes))


def expand_word_tracked(
    word: str,
    env: Mapping[str, str],
    escape: str = "\\",
    *,
    skip_unset: bool = False,
    raw_quotes: bool = False,
    raw_escapes: bool = False,
    skip_quotes: bool = False,
) -> Expansion:
    """`expand_word` plus the names it found and did not find in `env` (`ProcessWordWithMatches`)."""
    if "$" not in word and escape not in word and "'" not in word and '"' not in word:
        if "\ufeff" not in word:
            return Expansion(word, _NOTHING, _NOTHING)
    elif escape not in word and "'" not in word and '"' not in word:
        found: tuple[set[str], set[str]] = (set(), set())
        simple = _expand_simple(word, env, skip_unset, found)
        if simple is not None:
            return Expansion(simple, frozenset(found[0]), frozenset(found[1]))
    lexer = _Lexer(word, env, escape, skip_unset, raw_quotes, skip_quotes)
    result = lexer.run(lambda: lexer.scan_until(None, raw_escapes))
    return Expansion(result, frozenset(lexer.matched), frozenset(lexer.unmatched))


_NOTHING: frozenset[str] = frozenset()
_T = TypeVar("_T")

# Go's unicode.IsSpace, which splits words; str.isspace() would also split at \x1c-\x1f.
_GO_SPACES = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_GO_SPACE_RUN = re.compile(f"[{_GO_SPACES}]+")

# A parameter name: digits (`$123`), one special parameter (`$@`), or letters, digits and `_`
# not starting with a digit. `\w` is a little wider than Go's letters and digits, so names
# with non-ASCII characters are re-checked by _go_name.
_NAME = re.compile(r"\d+|[@*#?\-$!]|[^\W\d]\w*")

# `<<` and the blanks after it stay glued to the next word, so a heredoc opener written
# `<< EOF` is one word.
_HEREDOC_OPENER = re.compile(r"<<[ \t\r]*")

_EOF_BRACE = "syntax error: missing '}'"

# `$NAME` and `${NAME}` with an ASCII name: the references nearly every word has, expanded
# without the full scanner. A bare name running into a non-ASCII character is left to the
# scanner, since Go names are Unicode (the lookahead also stops backtracking to a shorter name).
_SIMPLE_REF = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}"  # ${NAME}
    r"|([A-Za-z_][A-Za-z0-9_]*)(?![0-9A-Za-z_]|[^\x00-\x7f]))"  # $NAME
)


def _expand_simple(
    word: str, env: Mapping[str, str], skip_unset: bool, found: tuple[set[str], set[str]] | None
) -> str | None:
    """`word` expanded if its only specials are simple references (and it has no leading BOM),
    else None. `found` collects the (matched, unmatched) names."""
    parts = _SIMPLE_REF.split(word)
    out = [parts[0]]
    if "$" in parts[0] or parts[0].startswith("\ufeff"):
        return None
    for i in range(1, len(parts), 3):
        braced, bare, literal = parts[i], parts[i + 1], parts[i + 2]
        if "$" in literal:
            return None
        name = braced or bare
        value = env.get(name)
        if value is None:
            if found is not None:
                found[1].add(name)
            if skip_unset:
                value = "${" + name + "}" if braced else "$" + name
            else:
                value = ""
        elif found is not None:
            found[0].add(name)
        out.append(value)
        out.append(literal)
    return "".join(out)


# Runs of characters with no meaning to the lexer, by (escape, stop character, quotes on,
# splitting words): the scanner copies them in one step instead of char by char.
_plain_runs: dict[tuple[str, str, bool, bool], re.Pattern[str]] = {}


def _plain_run(escape: str, stop: str, quotes: bool, words: bool) -> re.Pattern[str]:
    key = (escape, stop, quotes, words)
    pattern = _plain_runs.get(key)
    if pattern is None:
        special = "$" + escape + stop + ("'\"" if quotes else "")
        extra = "<" + _GO_SPACES if words else ""
        pattern = re.compile(f"[^{re.escape(special)}{extra}]+")
        _plain_runs[key] = pattern
    return pattern


class _Lexer:
    """One expansion of one word: the position in it, the options, the names looked up."""

    __slots__ = (
        "text",
        "pos",
        "env",
        "escape",
        "skip_unset",
        "raw_quotes",
        "quotes",
        "matched",
        "unmatched",
        "subwords",
    )

    def __init__(
        self,
        text: str,
        env: Mapping[str, str],
        escape: str,
        skip_unset: bool,
        raw_quotes: bool,
        skip_quotes: bool,
    ) -> None:
        self.text = text
        # Go's text/scanner drops a byte-order mark at the very start of what it reads.
        self.pos = 1 if text.startswith("\ufeff") else 0
        self.env = env
        self.escape = escape
        self.skip_unset = skip_unset
        self.raw_quotes = raw_quotes
        self.quotes = not skip_quotes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()
        # How many `${name<op>word}` sub-words have been scanned; see scan_words.
        self.subwords = 0

    def run(self, scan: Callable[[], _T]) -> _T:
        """`scan()`, its failure worded as BuildKit wraps it."""
        try:
            return scan()
        except ExpansionError as err:
            raise ExpansionError(f"failed to process {go_quote(self.text)}: {err.message}") from None

    # --- the word as a whole -------------------------------------------------------------

    def scan_until(self, stop: str | None, raw_escapes: bool) -> str:
        """Expand from the current position up to `stop` (consumed) or, when None, the end."""
        text = self.text
        end = len(text)
        escape = self.escape
        quotes = self.quotes
        plain = _plain_run(escape, stop or "", quotes, False)
        out: list[str] = []
        pos = self.pos
        while pos < end:
            run = plain.match(text, pos)
            if run is not None:
                out.append(run.group())
                pos = run.end()
                if pos >= end:
                    break
            ch = text[pos]
            if ch == stop:
                self.pos = pos + 1
                return "".join(out)
            self.pos = pos
            if ch == "$":
                out.append(self.dollar())
            elif ch == "'" and quotes:
                out.append(self.single_quoted())
            elif ch == '"' and quotes:
                out.append(self.double_quoted(raw_escapes))
            else:  # the escape character: the next one is literal
                if raw_escapes:
                    out.append(ch)
                if pos + 1 >= end:
                    self.pos = end
                    break
                out.append(text[pos + 1])
                self.pos = pos + 2
            pos = self.pos
        self.pos = end
        if stop is not None:
            raise ExpansionError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out)

    def scan_words(self, raw_escapes: bool) -> list[str]:
        """Expand the whole text and split it into words (BuildKit `ProcessWords`)."""
        text = self.text
        end = len(text)
        escape = self.escape
        quotes = self.quotes
        plain = _plain_run(escape, "", quotes, True)
        words: list[str] = []
        current: list[str] = []  # pieces of the word being built

        def finish_word() -> None:
            word = "".join(current)
            if word:
                words.append(word)
            current.clear()

        pos = self.pos
        while pos < end:
            run = plain.match(text, pos)
            if run is not None:
                current.append(run.group())
                pos = run.end()
                continue
            ch = text[pos]
            self.pos = pos
            subwords = self.subwords
            if ch == "$":
                value = self.dollar()
                # BuildKit bug kept for compatibility: every `${name<op>word}` scans its word
                # into the lexer's one shared word buffer, wiping the piece of the current word
                # before it (`a${x:-b}` gives the word `b`).
                if self.subwords != subwords:
                    current.clear()
                # An unquoted expansion splits at its spaces; its first piece continues the
                # current word.
                pieces = _GO_SPACE_RUN.split(value)
                current.append(pieces[0])
                for piece in pieces[1:]:
                    finish_word()
                    current.append(piece)
            elif ch == "'" and quotes:
                current.append(self.single_quoted())
            elif ch == '"' and quotes:
                value = self.double_quoted(raw_escapes)
                if self.subwords != subwords:  # the same shared-buffer bug as above
                    current.clear()
                current.append(value)
            elif ch == "<":
                opener = _HEREDOC_OPENER.match(text, pos)
                current.append(opener.group() if opener is not None else "<")
                self.pos = opener.end() if opener is not None else pos + 1
            elif ch == escape:
                if raw_escapes:
                    current.append(ch)
                if pos + 1 >= end:
                    break
                current.append(text[pos + 1])
                self.pos = pos + 2
            else:  # white space
                finish_word()
                self.pos = _GO_SPACE_RUN.match(text, pos).end()  # type: ignore[union-attr]
            pos = self.pos
        finish_word()
        return words

    def subword(self, stop: str, raw_escapes: bool, eof_message: str) -> str:
        """The word inside `${...}` up to `stop`; at the end of the text BuildKit reports
        `eof_message` whatever went wrong inside."""
        self.subwords += 1
        try:
            return self.scan_until(stop, raw_escapes)
        except ExpansionError:
            if self.pos >= len(self.text):
                raise ExpansionError(eof_message) from None
            raise

    # --- quotes --------------------------------------------------------------------------

    def single_quoted(self) -> str:
        """A '...' string: everything literal, no escapes (so no way to write ' inside)."""
        text = self.text
        start = self.pos
        close = text.find("'", start + 1)
        if close < 0:
            self.pos = len(text)
            raise ExpansionError("unexpected end of statement while looking for matching single-quote")
        self.pos = close + 1
        return text[start : close + 1] if self.raw_quotes else text[start + 1 : close]

    def double_quoted(self, raw_escapes: bool) -> str:
        """A "..." string: `$` expands; the escape character escapes only `"`, `$` and itself."""
        text = self.text
        end = len(text)
        escape = self.escape
        plain = _plain_run(escape, '"', False, False)
        out: list[str] = ['"'] if self.raw_quotes else []
        pos = self.pos + 1
        while True:
            run = plain.match(text, pos)
            if run is not None:
                out.append(run.group())
                pos = run.end()
            if pos >= end:
                self.pos = end
                raise ExpansionError("unexpected end of statement while looking for matching double-quote")
            ch = text[pos]
            if ch == '"':
                self.pos = pos + 1
                if self.raw_quotes:
                    out.append('"')
                return "".join(out)
            if ch == "$":
                self.pos = pos
                out.append(self.dollar())
                pos = self.pos
                continue
            # The escape character. BuildKit quirk: with raw escapes, an escape before an
            # ordinary character comes out twice (once kept raw, once as a literal).
            pos += 1
            if raw_escapes:
                out.append(escape)
            if pos < end:
                nxt = text[pos]
                if nxt == '"' or nxt == "$" or nxt == escape:
                    out.append(nxt)
                    pos += 1
                else:
                    out.append(escape)

    # --- substitution --------------------------------------------------------------------

    def lookup(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            self.unmatched.add(name)
        else:
            self.matched.add(name)
        return value

    def name(self) -> str:
        """The parameter name at the current position (possibly empty), consumed."""
        found = _NAME.match(self.text, self.pos)
        if found is None:
            return ""
        name = found.group()
        if not name.isascii():
            name = _go_name(name)
        self.pos += len(name)
        return name

    def dollar(self) -> str:
        """The expansion of the `$...` at the current position, consumed."""
        text = self.text
        end = len(text)
        self.pos += 1
        if self.pos >= end or text[self.pos] != "{":
            name = self.name()
            if not name:
                return "$"  # a lone `$`, or `$` before something that is no name: literal
            value = self.lookup(name)
            if value is None:
                return "$" + name if self.skip_unset else ""
            return value

        self.pos += 1
        if self.pos >= end:
            raise ExpansionError(_EOF_BRACE)
        if text[self.pos] in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        if self.pos >= end:
            # BuildKit says "unsupported modifier (\ufffd)" here; the missing brace is the truth.
            raise ExpansionError(_EOF_BRACE)
        op = text[self.pos]
        self.pos += 1
        if op == "}":
            value = self.lookup(name)
            if value is None:
                return "${" + name + "}" if self.skip_unset else ""
            return value
        if op == ":":
            if self.pos >= end:
                raise ExpansionError(_EOF_BRACE)
            op = text[self.pos]
            self.pos += 1
            if op == "#" or op == "%":
                raise ExpansionError(f"unsupported modifier (:{op}) in substitution")
            # Any character may follow the colon here; a wrong one is only reported after
            # its word has been read, and not at all for an unset name under skip_unset.
            return self.modified(name, op, True)
        if op in "+-?#%":
            return self.modified(name, op, False)
        if op == "/":
            return self.replaced(name)
        raise ExpansionError(f"unsupported modifier ({op}) in substitution")

    def modified(self, name: str, op: str, colon: bool) -> str:
        """`${name<op>word}` (`colon`: written `${name:<op>word}`, empty counts as unset)."""
        # Patterns keep their escapes so `\*` can mean a literal star.
        word = self.subword("}", op == "#" or op == "%", _EOF_BRACE)
        value = self.lookup(name)
        if value is None and self.skip_unset:
            return "${" + name + (":" if colon else "") + op + word + "}"
        missing = value is None or (colon and value == "")
        if op == "-":
            return word if value is None or missing else value
        if op == "+":
            return "" if missing else word
        if op == "?":
            if value is None:
                raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
            if missing:
                raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if op == "#" or op == "%":
            # A doubled operator (`##`, `%%`) removes the longest match, a single the shortest.
            greedy = word.startswith(op)
            if greedy:
                word = word[1:]
            if op == "#":
                return _trim_prefix(word, value or "", greedy)
            return _trim_suffix(word, value or "", greedy)
        raise ExpansionError(f"unsupported modifier ({':' if colon else ''}{op}) in substitution")

    def replaced(self, name: str) -> str:
        """`${name/pattern/replacement}`, or `${name//pattern/replacement}` for every match."""
        every = self.pos < len(self.text) and self.text[self.pos] == "/"
        if every:
            self.pos += 1
        pattern = self.subword("/", True, "syntax error: missing '/' in ${}")
        replacement = self.subword("}", True, _EOF_BRACE)
        value = self.lookup(name)
        if value is None:
            if self.skip_unset:
                # BuildKit writes it back with a single slash even for `//`.
                return "${" + name + "/" + pattern + "/" + replacement + "}"
            value = ""
        regex = _compile_pattern(pattern, greedy=True)
        if every:
            return _replace_all(regex, value, replacement)
        found = regex.search(value)
        if found is None:
            return value
        return value[: found.start()] + replacement + value[found.end() :]


def _go_name(candidate: str) -> str:
    """The part of a `\\w`-matched name that Go also counts as a name: letters, `_`, and
    decimal digits (Python's `\\w` also takes other numerals, like `²`)."""
    if candidate[0].isdecimal():
        return candidate
    for i, ch in enumerate(candidate):
        if not _is_go_name_char(ch):
            return candidate[:i]
    return candidate


def _is_go_name_char(ch: str) -> bool:
    """Go's unicode.IsLetter or unicode.IsDigit (category Nd), or `_`."""
    return ch == "_" or ch.isalpha() or ch.isdecimal()


# --- shell patterns (`#`, `%`, `/`) -------------------------------------------------------

# Characters a Go (and Python) regex would otherwise read as syntax.
_REGEX_SYNTAX = frozenset("[]{}.+()|^$")


def _compile_pattern(pattern: str, greedy: bool) -> re.Pattern[str]:
    """A shell pattern as a regex: `?` any character, `*` any run (shortest unless greedy),
    `\\` before `*`, `?` or `\\` a literal. No bracket expressions: `[` is literal, as in
    BuildKit. An escape before `}` or `/` only protected it from ending the `${}`."""
    star = ".*" if greedy else ".*?"
    out: list[str] = []
    i = 1 if pattern.startswith("\ufeff") else 0  # Go's text/scanner skips a leading BOM
    end = len(pattern)
    while i < end:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            nxt = pattern[i] if i < end else ""
            if nxt == "}" or nxt == "/":
                continue
            if nxt != "*" and nxt != "?" and nxt != "\\":
                # Go prints the missing character after a final backslash as U+FFFD.
                shown = nxt or "\ufffd"
                reason = f"invalid escape '\\{shown}'"
                raise ExpansionError(f"invalid pattern ({pattern}) in substitution: {reason}")
            out.append("\\" + nxt)
            i += 1
        elif ch in _REGEX_SYNTAX:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    found = _compile_pattern(pattern, greedy).match(value)
    return value[found.end() :] if found is not None else value


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex finds the leftmost match, not the shortest rightmost one: trim the reversed
    # value by the reversed pattern instead.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _reverse_pattern(pattern: str) -> str:
    """`pattern` backwards, each `\\x` escape pair kept in order (`a\\*c` -> `c\\*a`)."""
    pieces: list[str] = []
    i = 0
    last = len(pattern) - 1
    while i <= last:
        if pattern[i] == "\\" and i != last:
            pieces.append(pattern[i : i + 2])
            i += 2
        else:
            pieces.append(pattern[i])
            i += 1
    return "".join(reversed(pieces))


def _replace_all(regex: re.Pattern[str], value: str, template: str) -> str:
    """Go's Regexp.ReplaceAllString: `$0`/`${0}` in the replacement insert the match, `$$` a
    dollar; and an empty match right after a match is skipped (Python's re.sub keeps it)."""
    out: list[str] = []
    last = 0
    search = 0
    end = len(value)
    expand = "$" in template
    while search <= end:
        found = regex.search(value, search)
        if found is None:
            break
        start, stop = found.span()
        out.append(value[last:start])
        if stop > last or start == 0:
            out.append(_expand_template(template, found.group()) if expand else template)
        last = stop
        search = max(search + 1, stop)
    out.append(value[last:])
    return "".join(out)


def _expand_template(template: str, match: str) -> str:
    """Go's Regexp.Expand for a regex without groups: only group 0, the whole match, exists;
    any other well-formed `$name`/`${name}` is empty; a malformed one stays literal."""
    out: list[str] = []
    i = 0
    end = len(template)
    while True:
        dollar = template.find("$", i)
        if dollar < 0:
            break
        out.append(template[i:dollar])
        i = dollar + 1
        if i < end and template[i] == "$":
            out.append("$")
            i += 1
            continue
        braced = i < end and template[i] == "{"
        start = i + 1 if braced else i
        stop = start
        while stop < end and _is_go_name_char(template[stop]):
            stop += 1
        if stop == start or (braced and (stop >= end or template[stop] != "}")):
            out.append("$")
            continue
        if template[start:stop] == "0":
            out.append(match)
        i = stop + 1 if braced else stop
    out.append(template[i:])
    return "".join(out)
