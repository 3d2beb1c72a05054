"""Compiles dockerfile.lark with Lark into `_tables.py`, the LALR tables `lalr.py` runs.

Lark is the grammar's compiler, not a run-time dependency: importing it costs ~90 ms, more
than a whole `buildpy parse` may take. `python -m buildpy.grammar.tables` rewrites the tables
after the grammar changes; a test fails while they disagree with the grammar.
"""

from __future__ import annotations

import hashlib
import pprint
import sys
from pathlib import Path

HERE = Path(__file__).parent
GRAMMAR = HERE / "dockerfile.lark"
TABLES = HERE / "_tables.py"

# How a reduced rule becomes a value (Lark's tree-shaping rules for this grammar).
CALL, SPLICE, PASS_SINGLE = 0, 1, 2


def grammar_digest() -> str:
    return hashlib.sha256(GRAMMAR.read_bytes()).hexdigest()


def render() -> str:
    """The text of `_tables.py` for the current grammar."""
    from lark import Lark
    from lark.lexer import Lexer

    class _NoLexer(Lexer):
        def __init__(self, conf: object) -> None:
            pass

        def lex(self, data):  # type: ignore[override]
            return iter(())

    lark = Lark(GRAMMAR.read_text(), parser="lalr", lexer=_NoLexer)
    table = lark.parser.parser.parser.parse_table
    rules = list(lark.rules)
    index = {id(rule): i for i, rule in enumerate(rules)}
    rule_rows = []
    for rule in rules:
        name = str(rule.origin.name)
        if name.startswith("_"):
            mode = SPLICE
        elif rule.options.expand1:
            mode = PASS_SINGLE
        else:
            mode = CALL
        # only a rule with a `_x` symbol in it can receive children to splice
        splices = any(str(symbol.name).startswith("_") for symbol in rule.expansion)
        rule_rows.append((name, len(rule.expansion), mode, splices))
    # Lark numbers states differently from run to run: number them in breadth-first order
    # from the start state, so the same grammar always writes the same file.
    start, end = table.start_states["start"], table.end_states["start"]
    number = {start: 0}
    queue = [start]
    for state in queue:
        for _symbol, (action, arg) in sorted(table.states[state].items()):
            if action.name == "Shift" and arg not in number:
                number[arg] = len(number)
                queue.append(arg)
    if end not in number:
        number[end] = len(number)
    actions: dict[int, dict[str, tuple[int, int]]] = {}
    for state in sorted(table.states, key=lambda s: number[s]):
        actions[number[state]] = {
            str(symbol): (0, number[arg]) if action.name == "Shift" else (1, index[id(arg)])
            for symbol, (action, arg) in sorted(table.states[state].items())
        }
    return (
        '"""LALR tables of dockerfile.lark, written by `python -m buildpy.grammar.tables`: do not edit."""\n\n'
        f"GRAMMAR_SHA256 = {grammar_digest()!r}\n"
        f"CALL, SPLICE, PASS_SINGLE = {CALL}, {SPLICE}, {PASS_SINGLE}\n"
        f"START = {number[start]!r}\n"
        f"END = {number[end]!r}\n"
        "# (rule name, symbols it reduces, 0 call / 1 splice into the parent / 2 pass a single child,\n"
        "#  whether a child may be spliced into it)\n"
        f"RULES = {pprint.pformat(rule_rows, width=100)}\n"
        "# state -> {symbol: (0 shift to state | 1 reduce by rule, argument)}\n"
        f"ACTIONS = {pprint.pformat(actions, width=100)}\n"
    )


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if TABLES.exists() and TABLES.read_text() == text else 1)
    TABLES.write_text(text)
