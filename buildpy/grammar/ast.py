"""The parser's output: one `Node` per instruction, as BuildKit's parser AST holds it.

A Node is still untyped text (keyword, flags, argument words); `instructions.py` turns it
into typed instructions. The words are exactly those BuildKit's `Dump()` prints, so
`dump()` here is the conformance format of `buildpy parse`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Heredoc:
    """A here-document attached to RUN, COPY or ADD (`<<EOF` … `EOF`)."""

    name: str  # the delimiter word, quotes removed
    content: str  # the body, every line with its newline; leading tabs kept (see `chomp`)
    expand: bool  # False when any part of the delimiter was quoted
    chomp: bool  # `<<-`: leading tabs are stripped from the body when it is used
    fd: int  # the file descriptor before `<<` (`3<<EOF`); 0 when none was written

    def body(self) -> str:
        """The content as the instruction uses it (leading tabs removed for `<<-`)."""
        if not self.chomp:
            return self.content
        return "".join(line.lstrip("\t") for line in self.content.splitlines(keepends=True))


@dataclass(frozen=True, slots=True)
class Node:
    """One instruction line (continuations joined) with what the parser found in it."""

    keyword: str  # as written: "RUN", "from", "Copy"; `.command` is the lower-case name
    flags: tuple[str, ...] = ()  # "--name=value" words before the arguments, quotes removed
    args: tuple[str, ...] = ()  # the argument words (BuildKit's `Next` chain)
    json: bool = False  # the arguments were written as a JSON array (exec form)
    child: Node | None = None  # ONBUILD's inner instruction
    heredocs: tuple[Heredoc, ...] = ()
    original: str = ""  # the logical line: continuations joined, comments dropped
    start_line: int = 0  # 1-based, first physical line
    end_line: int = 0  # last physical line (heredoc bodies included)
    col: int = 1  # column of the keyword on the start line
    comments: tuple[str, ...] = ()  # the comment lines right before it (for build checks)
    # Where each part of `original` came from: (offset in original, line, column) per segment,
    # so a column found in the logical line can be named in the file.
    segments: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)

    @property
    def command(self) -> str:
        return self.keyword.lower()

    def position(self, offset: int) -> tuple[int, int]:
        """(line, column) in the file of a character offset into `original`."""
        return locate(self.segments, self.start_line, self.col, offset)

    def find(self, text: str) -> tuple[int, int]:
        """(line, column) of the first place `text` stands in the instruction, else its start."""
        offset = self.original.find(text) if text else -1
        if offset < 0:
            return self.start_line, self.col
        return self.position(offset)

    def dump(self) -> str:
        """The node as BuildKit's `Node.Dump()` prints it: `(run "echo" "hi")`."""
        parts = [self.command]
        if self.flags:
            parts.append("[" + " ".join(go_quote(f) for f in self.flags) + "]")
        if self.child is not None:
            parts.append(f"({self.child.dump()})")
        parts.extend(go_quote(a) for a in self.args)
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Directive:
    """A parser directive from the top of the file (`# syntax=…`, `# escape=…`, `# check=…`)."""

    name: str  # lower case
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Warning:
    """Something the parser accepts but a build check reports (an empty continuation line)."""

    rule: str
    message: str
    line: int


@dataclass(frozen=True, slots=True)
class ParseResult:
    file: str
    nodes: tuple[Node, ...]
    directives: tuple[Directive, ...]
    escape: str
    warnings: tuple[Warning, ...] = ()

    def dump(self) -> str:
        return "".join(f"({n.dump()})\n" for n in self.nodes)


def locate(segments: tuple[tuple[int, int, int], ...], line: int, col: int, offset: int) -> tuple[int, int]:
    """(line, column) of `offset` in a logical line made of `segments` (offset, line, column)."""
    for seg_offset, seg_line, seg_col in segments:
        if seg_offset > offset:
            break
        line, col = seg_line, seg_col + (offset - seg_offset)
    return line, col


def go_quote(s: str) -> str:
    """`strconv.Quote` of Go: a double-quoted string with Go's escapes, printable Unicode kept."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif ch == "\ufffd" or (o >= 0x20 and ch.isprintable()) or ch == " ":
            out.append(ch)
        elif o < 0x10000 and 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")  # a lone surrogate is invalid UTF-8; Go prints U+FFFD's escape
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def loads_json_array(text: str) -> list[str] | None:
    """The strings of a JSON array, None when `text` is not one; ValueError for non-strings."""
    text = text.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise ValueError("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _reject_constant(name: str) -> None:
    # Go's encoding/json has no NaN/Infinity: such an array is not JSON to BuildKit either.
    raise ValueError(name)
