"""The LALR tables shipped in `_tables.py` are exactly what Lark compiles from dockerfile.lark."""

from __future__ import annotations

from buildpy.grammar import _tables, tables


def test_tables_match_the_grammar():
    assert _tables.GRAMMAR_SHA256 == tables.grammar_digest(), (
        "dockerfile.lark changed: run `python -m buildpy.grammar.tables`"
    )
    assert tables.TABLES.read_text() == tables.render()


def test_the_grammar_is_lalr_for_lark():
    from lark import Lark

    # Lark refuses a grammar with LALR conflicts; this is the grammar as users read it
    Lark(tables.GRAMMAR.read_text(), parser="lalr", lexer=_no_lexer())


def _no_lexer():
    from lark.lexer import Lexer

    class NoLexer(Lexer):
        def __init__(self, conf):
            pass

        def lex(self, data):
            return iter(())

    return NoLexer
