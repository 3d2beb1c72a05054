"""Dockerfile text → `ParseResult` (untyped instruction nodes): dockerfile.lark over scanner.py.

The grammar runs as LALR tables compiled from dockerfile.lark (lalr.py), so parsing needs no
grammar compiler at run time.
"""

from __future__ import annotations

from buildpy.grammar.ast import Heredoc, Node, ParseResult
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.lalr import Token, UnexpectedToken
from buildpy.grammar.lalr import parse as run_tables
from buildpy.grammar.scanner import Line, Scanner

_INSTRUCTION_RULES = frozenset(
    "from_ run cmd entrypoint shell add copy volume env label arg expose user workdir "
    "maintainer stopsignal healthcheck onbuild unknown".split()
)


class _Parts:
    """What an instruction rule found, before the END token gives it its place in the file."""

    __slots__ = ("keyword", "flags", "args", "json", "child", "heredocs")

    def __init__(self, children: list) -> None:
        keyword: Token = children[0]
        self.keyword: str = keyword.value
        flags: list[str] = []
        args: list[str] = []
        heredocs: list[Heredoc] = []
        self.json = False
        self.child: _Parts | None = None
        for item in children[1:]:
            if isinstance(item, _Parts):
                self.child = item
                continue
            kind = item.kind
            if kind == "FLAGS":
                flags.extend(item.value)
            elif kind in ("JSON", "WORDS"):
                args.extend(item.value)
                self.json = self.json or kind == "JSON"
            elif kind == "PAIRS":
                for pair in item.value:
                    args.extend(pair)
            elif kind == "HEREDOCS":
                heredocs.extend(item.value)
            else:
                args.append(item.value)
        if keyword.kind == "UNKNOWN":
            args = [""]  # BuildKit's parser keeps an unknown instruction with one empty word
        self.flags, self.args, self.heredocs = tuple(flags), tuple(args), tuple(heredocs)

    def node(self, line: Line, end_line: int, comments: tuple[str, ...] = ()) -> Node:
        child = self.child.node(line, end_line) if self.child is not None else None
        return Node(
            keyword=self.keyword,
            flags=self.flags,
            args=self.args,
            json=self.json,
            child=child,
            heredocs=self.heredocs,
            original=line.text,
            start_line=line.start_line,
            end_line=end_line,
            col=line.col,
            comments=comments,
            segments=line.segments,
        )


def _reduce(name: str, children: list):
    if name in _INSTRUCTION_RULES:
        return _Parts(children)
    if name == "instruction":
        parts, end = children
        line, end_line = end.value
        return parts.node(line, end_line, line.comments)
    if name == "start":
        return tuple(c for c in children if isinstance(c, Node))
    return None  # directive: the scanner keeps the directives


def parse(source: str | bytes, file: str = "Dockerfile") -> ParseResult:
    """Parses a Dockerfile; a mistake raises DockerfileError naming `file:line:col`."""
    if isinstance(source, bytes):
        source = source.decode("utf-8", errors="replace")
    scanner = Scanner(source)
    try:
        nodes = run_tables(scanner.tokens(), _reduce)
    except DockerfileError as e:
        e.file = file
        raise
    except UnexpectedToken as e:  # the scanner emits only well-formed streams; kept as a guard
        raise DockerfileError(f"unexpected {e.token.kind}", file, e.token.line, e.token.col) from None
    if not nodes:
        raise DockerfileError("file with no instructions", file, len(scanner.lines), 0)
    return ParseResult(file, nodes, tuple(scanner.directives), scanner.escape, tuple(scanner.warnings))
