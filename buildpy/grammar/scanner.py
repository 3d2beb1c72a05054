"""The Dockerfile's lexical layer: physical lines in, the tokens of `dockerfile.lark` out.

What a context-free grammar cannot hold lives here, with BuildKit's parser as the model:
parser directives at the top (`# escape=` changes the escape character for what follows),
comments, continuation lines (joined, with comment and empty lines inside a continuation
skipped), heredoc bodies (raw lines after the instruction, up to the delimiter), the split of
an instruction into keyword, `--flags` and arguments, and each instruction's argument form
(JSON array or shell text, whitespace words, key=value pairs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from buildpy.grammar.ast import Directive, Heredoc, Warning, go_quote, loads_json_array, locate
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.lalr import Token

# Go's unicode.IsSpace, which BuildKit uses to trim and split (Python's isspace differs).
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE_RUN = re.compile(r"[\t\v\f\r ]+")  # BuildKit's reWhitespace: no newline
_DIRECTIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*$")  # Go's \s
_HEREDOC_WORD = re.compile(r"^([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)$")
_KNOWN_DIRECTIVES = frozenset({"syntax", "escape", "check"})

# How each instruction's arguments are read (BuildKit's dispatch table in parser.go).
ARGUMENT_FORMS: dict[str, str] = {
    "add": "paths",
    "arg": "words_quoted",
    "cmd": "command",
    "copy": "paths",
    "entrypoint": "command",
    "env": "pairs",
    "expose": "words",
    "from": "words",
    "healthcheck": "healthcheck",
    "label": "pairs",
    "maintainer": "text",
    "onbuild": "onbuild",
    "run": "command",
    "shell": "command",
    "stopsignal": "text",
    "user": "text",
    "volume": "paths",
    "workdir": "text",
}
HEREDOC_COMMANDS = frozenset({"add", "copy", "run"})


@dataclass(slots=True)
class Line:
    """One logical line: physical lines joined, and where each piece came from."""

    text: str
    start_line: int
    end_line: int
    col: int  # column of the first character of `text`
    segments: tuple[tuple[int, int, int], ...]
    comments: tuple[str, ...]


def go_trim(s: str) -> str:
    return s.strip(GO_SPACE)


def is_comment(line: str) -> bool:
    return line.lstrip(GO_SPACE).startswith("#")


class Scanner:
    """Reads a Dockerfile's text; `tokens()` yields the grammar's tokens instruction by instruction."""

    def __init__(self, text: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        self.lines = text.replace("\r\n", "\n").split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()  # the newline that ends the last line opens no new one
        self.escape = "\\"
        self._continuation = _continuation_regex(self.escape)
        self.directives: list[Directive] = []
        self.warnings: list[Warning] = []
        self._directives_done = False
        self._seen_directives: set[str] = set()
        self.pos = 0  # index of the next physical line

    # -- directives -----------------------------------------------------------------------

    def _directive(self, line: str, lineno: int) -> bool:
        """Reads a parser directive; True when `line` was one (and so is not a comment)."""
        if self._directives_done:
            return False
        if not line.startswith("#"):
            self._directives_done = True
            return False
        m = _DIRECTIVE.match(line[1:].lstrip(GO_SPACE))
        if m is None or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            self._directives_done = True
            return False
        name, value = m.group(1).lower(), m.group(2)
        if name in self._seen_directives:
            raise DockerfileError(f"only one {name} parser directive can be used", line=lineno, col=1)
        self._seen_directives.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(
                    f"invalid escape token '{value}' does not match ` or \\", line=lineno, col=1
                )
            self.escape = value
            self._continuation = _continuation_regex(value)
        self.directives.append(Directive(name, value, lineno))
        return True

    # -- logical lines --------------------------------------------------------------------

    def _process(self, raw: str, lineno: int, strip_left: bool) -> tuple[str, int]:
        """A physical line without its leading space (first line only) and comment; its column."""
        line = raw.rstrip("\r\n")
        col = 1
        if strip_left:
            stripped = line.lstrip(GO_SPACE)
            col += len(line) - len(stripped)
            line = stripped
        if self._directive(line, lineno):
            return "", col
        if is_comment(line):
            return "", col
        return line, col

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        """(line without its continuation mark, whether the instruction ends on this line)."""
        m = self._continuation.search(line)
        if m is None:
            return line, True
        return line[: m.start()] + (m.group(1) or ""), False

    def next_line(self) -> Line | None:
        """The next logical line holding an instruction, None at the end of the file."""
        comments: list[str] = []
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            self.pos += 1
            start = self.pos
            if is_comment(raw):
                comment = go_trim(raw.lstrip(GO_SPACE)[1:])
                comments = [*comments, comment] if comment else []
            was_directive_count = len(self.directives)
            text, col = self._process(raw, start, strip_left=True)
            if len(self.directives) != was_directive_count and comments:
                comments.pop()
            text, ends = self._trim_continuation(text)
            if ends and not text:
                continue
            pieces = [text]
            segments = [(0, start, col)]
            offset = len(text)
            empty_continuation = False
            while not ends and self.pos < len(self.lines):
                raw = self.lines[self.pos]
                self.pos += 1
                text, col = self._process(raw, self.pos, strip_left=False)
                if is_comment(raw):
                    continue
                if not text.lstrip(GO_SPACE):
                    empty_continuation = True
                    continue
                text, ends = self._trim_continuation(text)
                segments.append((offset, self.pos, col))
                pieces.append(text)
                offset += len(text)
            joined = "".join(pieces)
            if empty_continuation:
                self.warnings.append(
                    Warning("NoEmptyContinuation", f"Empty continuation line found in: {joined}", self.pos)
                )
            return Line(joined, start, self.pos, segments[0][2], tuple(segments), tuple(comments))
        return None

    def read_heredoc(self, doc: Heredoc, start_line: int) -> Heredoc:
        """The heredoc with its body: the raw lines up to its delimiter."""
        body: list[str] = []
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            self.pos += 1
            candidate = raw.rstrip("\r\n")
            if doc.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == doc.name:
                return Heredoc(doc.name, "".join(body), doc.expand, doc.chomp, doc.fd)
            body.append(raw + "\n")
        raise DockerfileError(f"unterminated heredoc {doc.name!r}", line=start_line, col=1)

    # -- tokens ---------------------------------------------------------------------------

    def tokens(self) -> Iterator[Token]:
        while (line := self.next_line()) is not None:
            yield from self._instruction_tokens(line.text, line, 0)
            # heredoc bodies were read by now: the instruction ends where the reading stands
            yield _token("END", line, "", 0, value=(line, self.pos))

    def _instruction_tokens(self, text: str, line: Line, base: int) -> Iterator[Token]:
        """Tokens of one instruction; `base` is where `text` starts in the logical line."""
        stripped = go_trim(text)
        base += len(text) - len(text.lstrip(GO_SPACE))
        parts = _WHITESPACE_RUN.split(stripped, maxsplit=1)
        keyword = parts[0]
        command = keyword.lower()
        form = ARGUMENT_FORMS.get(command)
        yield _token(command.upper() if form else "UNKNOWN", line, keyword, base, value=keyword)
        rest, rest_offset, flags = "", base + len(stripped), []
        if len(parts) == 2:
            after_keyword = base + len(stripped) - len(parts[1])
            rest, flags, rest_offset = extract_flags(parts[1], self.escape, after_keyword)
        if flags:
            yield _token("FLAGS", line, "", flags[0][1], value=tuple(flag for flag, _ in flags))
        trimmed_offset = rest_offset + len(rest) - len(rest.lstrip(GO_SPACE))
        rest = go_trim(rest)
        if form is None:
            return
        if form == "onbuild":
            if rest:
                yield from self._instruction_tokens(rest, line, trimmed_offset)
            return
        arguments = list(_argument_tokens(form, command, rest, self.escape, line, trimmed_offset))
        yield from arguments
        is_json = bool(arguments) and arguments[0].kind == "JSON"
        if command in HEREDOC_COMMANDS and "<<" in line.text and not is_json:
            try:
                docs = heredocs_in(line.text)
            except DockerfileError as e:
                raise e.located(line=line.start_line, col=line.col) from None
            if docs:
                bodies = tuple(self.read_heredoc(doc, line.start_line) for doc in docs)
                yield _token("HEREDOCS", line, "", 0, value=bodies)


def _continuation_regex(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*$|^{e}[ \t]*$")


def _token(kind: str, line: Line, text: str, offset: int, value: object = None) -> Token:
    lineno, col = _locate(line, offset)
    return Token(kind, text if value is None else value, lineno, col)


def _locate(line: Line, offset: int) -> tuple[int, int]:
    return locate(line.segments, line.start_line, line.col, offset)


def _argument_tokens(form: str, command: str, rest: str, escape: str, line: Line, offset: int) -> Iterator[Token]:
    """The arguments as one token (a JSON array, the text, or the tuple of words or pairs)."""
    if form == "command":
        if rest:
            yield _json_or_text(rest, line, offset)
    elif form == "paths":
        json_token = _json_token(rest, line, offset)
        if json_token is not None:
            yield json_token
        elif rest:
            yield _token("WORDS", line, rest, offset, value=tuple(_WHITESPACE_RUN.split(rest)))
    elif form == "words":
        if rest:
            yield _token("WORDS", line, rest, offset, value=tuple(_WHITESPACE_RUN.split(rest)))
    elif form == "text":
        if rest:
            yield _token("TEXT", line, rest, offset)
    elif form == "words_quoted":
        words = parse_words(rest, escape)
        if words:
            yield _token("WORDS", line, rest, offset, value=tuple(words))
    elif form == "pairs":
        pairs = name_value_pairs(command.upper(), rest, escape, line)
        if pairs:
            yield _token("PAIRS", line, rest, offset, value=tuple(pairs))
    elif form == "healthcheck":
        yield from _healthcheck_tokens(rest, line, offset)


def _json_token(rest: str, line: Line, offset: int) -> Token | None:
    try:
        words = loads_json_array(rest)
    except ValueError as e:
        lineno, col = _locate(line, offset)
        raise DockerfileError(str(e), line=lineno, col=col) from None
    if words is None:
        return None
    return _token("JSON", line, rest, offset, value=tuple(words))


def _json_or_text(rest: str, line: Line, offset: int) -> Token:
    return _json_token(rest, line, offset) or _token("TEXT", line, rest, offset)


def _healthcheck_tokens(rest: str, line: Line, offset: int) -> Iterator[Token]:
    sep = 0
    while sep < len(rest) and rest[sep] not in GO_SPACE:
        sep += 1
    if sep == 0:
        return
    nxt = sep
    while nxt < len(rest) and rest[nxt] in GO_SPACE:
        nxt += 1
    yield _token("WORD", line, rest[:sep], offset)
    if nxt < len(rest):
        yield _json_or_text(rest[nxt:], line, offset + nxt)


def extract_flags(line: str, escape: str, base: int) -> tuple[str, list[tuple[str, int]], int]:
    """Leading `--flag` words of an instruction: (the rest, [(flag, offset)], offset of the rest).

    A word `--` ends the flags; quotes group and are removed; the escape character takes
    the next character literally (BuildKit's extractBuilderFlags).
    """
    flags: list[tuple[str, int]] = []
    pos, n = 0, len(line)
    while True:
        while pos < n and line[pos] in GO_SPACE:
            pos += 1
        if pos >= n:
            return "", flags, base + n
        if not line.startswith("--", pos):
            return line[pos:], flags, base + pos
        start = pos
        word: list[str] = []
        quote = ""
        while pos < n:
            ch = line[pos]
            if quote:
                if ch == quote:
                    quote = ""
                    pos += 1
                    continue
            elif ch in GO_SPACE:
                break
            elif ch in "'\"":
                quote = ch
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    quote = ""
                    continue
                pos += 1
                ch = line[pos]
            word.append(ch)
            pos += 1
        text = "".join(word)
        if text == "--":
            return line[pos:], flags, base + pos
        # an empty word only when quotes made it (`--""`): not possible here, it starts with --
        flags.append((text, base + start))


def parse_words(rest: str, escape: str) -> list[str]:
    """Words split at unquoted spaces, quotes and escapes kept as written (BuildKit's parseWords)."""
    words: list[str] = []
    word: list[str] = []
    blank_ok = False
    quote = ""
    in_word = False
    pos, n = 0, len(rest)
    while pos < n:
        ch = rest[pos]
        if not in_word:
            if ch in GO_SPACE:
                pos += 1
                continue
            in_word = True
        if not quote:
            if ch in GO_SPACE:
                if blank_ok or word:
                    words.append("".join(word))
                word, blank_ok, in_word = [], False, False
                pos += 1
                continue
            if ch in "'\"":
                quote, blank_ok = ch, True
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue  # an escape at the very end is dropped
                word.append(ch)
                pos += 1
                ch = rest[pos]
            word.append(ch)
            pos += 1
            continue
        if ch == quote:
            quote = ""
        elif ch == escape and quote != "'":
            if pos + 1 == n:
                quote = ""
                pos += 1
                continue
            word.append(ch)
            pos += 1
            ch = rest[pos]
        word.append(ch)
        pos += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def name_value_pairs(keyword: str, rest: str, escape: str, line: Line) -> list[tuple[str, str, str]]:
    """ENV/LABEL arguments as (key, value, separator): "=" pairs, or one legacy `KEY value`."""
    words = parse_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _WHITESPACE_RUN.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise DockerfileError(f"{keyword} must have two arguments", line=line.start_line, col=line.col)
        return [(parts[0], parts[1], "")]
    pairs = []
    for word in words:
        if "=" not in word:
            lineno, col = _locate(line, max(line.text.find(word), 0))
            raise DockerfileError(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value",
                line=lineno,
                col=col,
            )
        key, value = word.split("=", 1)
        pairs.append((key, value, "="))
    return pairs


def heredocs_in(line: str) -> list[Heredoc]:
    """The heredocs an instruction line opens (`<<EOF`, `<<-"EOF"`, `3<<EOF`), in order."""
    from buildpy.grammar.shell import expand_words

    try:
        words = expand_words(line, {}, "\\", skip_unset=True, raw_quotes=True, raw_escapes=True)
    except DockerfileError:
        return []
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


def parse_heredoc(word: str) -> Heredoc | None:
    """A heredoc opener word, or None. Quoting any part of the delimiter turns expansion off."""
    from buildpy.grammar.shell import expand_words

    m = _HEREDOC_WORD.match(word)
    if m is None or not m.group(3):
        return None
    fd_text, chomp, rest = m.groups()
    words = expand_words(rest, {}, "\\", skip_unset=True)
    if len(words) != 1:
        return None
    raw = expand_words(rest, {}, "\\", skip_unset=True, raw_quotes=True)
    if len(raw) != 1:
        raise DockerfileError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(words[0], "", quotes == raw_quotes, chomp == "-", int(fd_text or 0))
