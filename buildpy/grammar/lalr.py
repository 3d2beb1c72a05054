"""Runs the LALR(1) tables compiled from dockerfile.lark over the scanner's tokens.

The tables come from Lark (see tables.py); this loop shapes values the way Lark shapes its
tree for this grammar: a rule whose name starts with `_` (Lark's own `__x_star_n` helpers
included) splices its children into its parent, a `?rule` with one child passes that child
up, and every other rule is handed to the caller's `reduce(name, children)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from buildpy.grammar import _tables
from buildpy.grammar._tables import PASS_SINGLE, SPLICE


class Token:
    """One unit from the scanner: its grammar symbol, its value and where it stands."""

    __slots__ = ("kind", "value", "line", "col")

    def __init__(self, kind: str, value: Any, line: int, col: int) -> None:
        self.kind = kind
        self.value = value
        self.line = line
        self.col = col

    def __repr__(self) -> str:
        return f"Token({self.kind}, {self.value!r}, {self.line}:{self.col})"


class UnexpectedToken(Exception):
    def __init__(self, token: Token, expected: list[str]) -> None:
        super().__init__(f"unexpected {token.kind} at {token.line}:{token.col}")
        self.token = token
        self.expected = expected


class _Spliced(list):
    """Children of a `_rule`, to be spliced into the parent's children."""

    __slots__ = ()


_END = "$END"


def parse(tokens: Iterable[Token], reduce: Callable[[str, list], Any]) -> Any:
    """Runs the tables over `tokens`; `reduce(name, children)` makes each named rule's value."""
    actions, rules = _tables.ACTIONS, _tables.RULES
    states: list[int] = [_tables.START]
    values: list[Any] = []
    row = actions[_tables.START]
    last: Token | None = None
    for token in tokens:
        row = _feed(token, token.kind, row, states, values, actions, rules, reduce)
        last = token
    end = Token(_END, None, last.line if last else 0, last.col if last else 0)
    _feed(end, _END, row, states, values, actions, rules, reduce)
    return values[-1]


def _feed(token, kind, row, states, values, actions, rules, reduce):
    """Reduces as the tables say, then shifts `token`; returns the new state's actions."""
    while True:
        action = row.get(kind)
        if action is None:
            raise UnexpectedToken(token, sorted(s for s in row if s.isupper()))
        if action[0] == 0:  # shift
            states.append(action[1])
            values.append(token)
            return actions[action[1]]
        name, size, mode, splices = rules[action[1]]
        if size:
            children = values[-size:]
            del values[-size:]
            del states[-size:]
        else:
            children = []
        if splices:
            # `x*` is left-recursive (`__x_star: __x_star x`): grow the list in place, or a
            # file of n instructions would copy O(n²) items
            if mode == SPLICE and children and type(children[0]) is _Spliced:
                flat = children[0]
                rest = children[1:]
            else:
                flat = _Spliced()
                rest = children
            for child in rest:
                if type(child) is _Spliced:
                    flat.extend(child)
                else:
                    flat.append(child)
            children = flat
        if mode == SPLICE:
            value: Any = children if type(children) is _Spliced else _Spliced(children)
        elif mode == PASS_SINGLE and len(children) == 1:
            value = children[0]
        else:
            value = reduce(name, children)
        goto = actions[states[-1]][name][1]
        states.append(goto)
        values.append(value)
        if kind == _END and goto == _tables.END:
            return None
        row = actions[goto]
