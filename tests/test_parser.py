"""The parser beyond BuildKit's dump files: heredocs, directives, continuations, positions, errors."""

from __future__ import annotations

import pytest

from buildpy.grammar.ast import Heredoc
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.parser import parse
from buildpy.grammar.scanner import parse_heredoc

# BuildKit's TestParseExtractsHeredoc, as a table of our own.
HEREDOC_FILE = """\
FROM alpine:3.6
ENV NAME=me
RUN ls
USER <<INVALID
INVALID
RUN <<EMPTY
EMPTY
RUN 3<<EMPTY2
EMPTY2
RUN "<<NOHEREDOC"
RUN <<INDENT
\tfoo
\tbar
INDENT
RUN <<-UNINDENT
\tbaz
\tquux
UNINDENT
RUN <<-UNINDENT2
\tbaz
\tquux
\tUNINDENT2
RUN <<-EXPAND
\texpand $NAME
EXPAND
RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND
RUN <<COPY
echo hello world
echo foo bar
COPY
RUN <<COMMENT
# internal comment
echo hello world
echo foo bar # trailing comment
COMMENT
RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT
COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2
COPY <<EOF /quotes
"foo"
'bar'
EOF
COPY <<X <<Y /dest
Y
X
X
Y
RUN <<COMPLEX python3
print('hello world')
COMPLEX
COPY <<file.txt /dest
hello world
file.txt
RUN <<eo'f'
echo foo
eof
RUN <<eo\\'f
echo foo
eo'f
RUN <<'e'o\\'f
echo foo
eo'f
RUN <<'one two'
echo bar
one two
RUN <<$EOF
$EOF
RUN <<  EOF
EOF
RUN <<  EOF  > foo
EOF
"""


def H(name, content="", expand=True, chomp=False, fd=0):
    return Heredoc(name, content, expand, chomp, fd)


HEREDOC_EXPECTED = [
    (),  # ENV
    (),  # RUN ls
    (),  # USER <<INVALID: USER takes no heredoc
    (),  # INVALID (an unknown instruction)
    (H("EMPTY"),),
    (H("EMPTY2", fd=3),),
    (),  # RUN "<<NOHEREDOC"
    (H("INDENT", "\tfoo\n\tbar\n"),),
    (H("UNINDENT", "\tbaz\n\tquux\n", chomp=True),),
    (H("UNINDENT2", "\tbaz\n\tquux\n", chomp=True),),
    (H("EXPAND", "\texpand $NAME\n", chomp=True),),
    (H("NOEXPAND", "\tdon't expand $NAME\n", expand=False, chomp=True),),
    (H("COPY", "echo hello world\necho foo bar\n"),),
    (H("COMMENT", "# internal comment\necho hello world\necho foo bar # trailing comment\n"),),
    (H("MOUNT", "echo hello\n"),),
    (H("FILE1", "content 1\n"), H("FILE2", "content 2\n")),
    (H("EOF", "\"foo\"\n'bar'\n"),),
    (H("X", "Y\n"), H("Y", "X\n")),
    (H("COMPLEX", "print('hello world')\n"),),
    (H("file.txt", "hello world\n"),),
    (H("eof", "echo foo\n", expand=False),),
    (H("eo'f", "echo foo\n"),),
    (H("eo'f", "echo foo\n", expand=False),),
    (H("one two", "echo bar\n", expand=False),),
    (H("$EOF"),),
    (H("EOF"),),
    (H("EOF"),),
]


def test_heredocs_as_buildkit_reads_them():
    nodes = parse(HEREDOC_FILE).nodes
    assert [n.heredocs for n in nodes[1:]] == HEREDOC_EXPECTED


def test_heredoc_lines_and_chomped_body():
    nodes = parse("FROM a\nRUN <<-EOT\n\tline one\n\t\tline two\n\tEOT\nRUN true\n").nodes
    run = nodes[1]
    assert (run.start_line, run.end_line) == (2, 5)
    assert run.heredocs[0].body() == "line one\nline two\n"
    assert nodes[2].start_line == 6


def test_json_form_has_no_heredoc():
    nodes = parse('FROM a\nRUN ["whoami"]\nRUN ["<<EOF"]\nRUN ["<<\'EOF\'"]\n').nodes
    assert all(not n.heredocs for n in nodes)


def test_onbuild_heredoc():
    nodes = parse("FROM a\nONBUILD RUN <<EOT\necho hi\nEOT\nRUN x\n").nodes
    assert nodes[1].child.heredocs == (H("EOT", "echo hi\n"),)
    assert nodes[2].dump() == 'run "x"'


@pytest.mark.parametrize(
    "word", ["<<EOF", "<<'EOF'", '<<"EOF"', "<<-EOF", "<<-'EOF'", '<<-"EOF"', '<<EO"F"', "<< EOF", "<<- EOF"]
)
def test_heredoc_opener(word):
    assert parse_heredoc(word).name == "EOF"


@pytest.mark.parametrize("word", ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"])
def test_not_a_heredoc_opener(word):
    assert parse_heredoc(word) is None


@pytest.mark.parametrize("word", ["<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'])
def test_broken_heredoc_opener(word):
    with pytest.raises(DockerfileError):
        parse_heredoc(word)


def test_unterminated_heredoc_names_its_line():
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nRUN true\nRUN <<EOT\necho hi\n")
    assert (info.value.line, info.value.message) == (3, "unterminated heredoc 'EOT'")
    assert str(info.value).startswith("Dockerfile:3:1: unterminated heredoc")


def test_unbalanced_quote_in_a_heredoc_line_is_shell_text():
    # BuildKit reads heredocs from the line's words; a line it cannot split has none
    node = parse("FROM a\nRUN cat <<'EOT\n").nodes[1]
    assert (node.heredocs, node.args) == ((), ("cat <<'EOT",))


# -- directives -----------------------------------------------------------------------------


def test_directives_read_only_at_the_top():
    result = parse("# syntax=docker/dockerfile:1\n# escape=`\n# check=skip=all\nFROM a\n# escape=\\\nRUN a `\n b\n")
    assert [(d.name, d.value, d.line) for d in result.directives] == [
        ("syntax", "docker/dockerfile:1", 1),
        ("escape", "`", 2),
        ("check", "skip=all", 3),
    ]
    assert result.escape == "`"
    assert result.nodes[1].args == ("a  b",)


def test_directive_after_a_comment_is_a_comment():
    result = parse("# hello\n# escape=`\nFROM a\nRUN a \\\n b\n")
    assert result.directives == ()
    assert result.nodes[1].args == ("a  b",)


def test_directive_after_a_blank_line_is_a_comment():
    assert parse("\n# escape=`\nFROM a\n").escape == "\\"


def test_repeated_directive_is_an_error():
    with pytest.raises(DockerfileError) as info:
        parse("# escape=`\n# escape=\\\nFROM a\n")
    assert (info.value.line, info.value.message) == (2, "only one escape parser directive can be used")


def test_bad_escape_token():
    with pytest.raises(DockerfileError) as info:
        parse("# escape=x\nFROM a\n")
    assert info.value.line == 1
    assert "invalid escape token 'x'" in info.value.message


# -- lines ----------------------------------------------------------------------------------


def test_crlf_and_bom():
    result = parse(b"\xef\xbb\xbfFROM a\r\nRUN echo \\\r\n  hi\r\n")
    assert result.dump() == '(from "a")\n(run "echo   hi")\n'


def test_continuation_skips_comments_and_blank_lines_and_warns():
    result = parse("FROM a\nRUN echo \\\n# a comment\n\n   one \\\n   two\n")
    assert result.nodes[1].args == ("echo    one    two",)
    assert (result.nodes[1].start_line, result.nodes[1].end_line) == (2, 6)
    assert [w.rule for w in result.warnings] == ["NoEmptyContinuation"]


def test_backtick_escape_continues_lines_and_keeps_backslashes():
    result = parse("# escape=`\nFROM a\nRUN dir c:\\ `\n  && echo hi\n")
    assert result.nodes[1].args == ("dir c:\\   && echo hi",)


def test_positions_across_continuations():
    node = parse("FROM a\n  RUN --mount=type=cache,target=/x \\\n    --network=none echo hi\n").nodes[1]
    assert (node.start_line, node.col) == (2, 3)
    assert node.find("--network") == (3, 5)
    assert node.find("--mount") == (2, 7)


def test_comments_before_an_instruction_are_kept():
    node = parse("FROM a\n# build the thing\n# twice\nRUN make\n").nodes[1]
    assert node.comments == ("build the thing", "twice")


def test_flags_with_quotes_and_double_dash():
    node = parse('FROM a\nCOPY --chown="me:me" --chmod=755 -- --odd /dst\n').nodes[1]
    assert node.flags == ("--chown=me:me", "--chmod=755")
    assert node.args == ("--odd", "/dst")


def test_invalid_json_falls_back_to_shell_form():
    node = parse("FROM a\nCMD [\"echo\", 'hi']\n").nodes[1]
    assert (node.json, node.args) == (False, ("[\"echo\", 'hi']",))


def test_json_nan_is_not_json():
    node = parse("FROM a\nCMD [NaN]\n").nodes[1]
    assert (node.json, node.args) == (False, ("[NaN]",))


def test_json_with_non_strings_is_an_error_with_column():
    with pytest.raises(DockerfileError) as info:
        parse('FROM a\nCMD  ["echo", 1]\n')
    assert (info.value.line, info.value.col) == (2, 6)
    assert info.value.message == "when using JSON array syntax, arrays must be comprised of strings only"


def test_env_legacy_needs_a_value():
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nENV PATH\n")
    assert (info.value.line, info.value.message) == (2, "ENV must have two arguments")


def test_label_pair_without_equals():
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nLABEL a=b  c\n")
    assert info.value.message == "Syntax error - can't find = in \"c\". Must be of the form: name=value"
    assert (info.value.line, info.value.col) == (2, 12)


def test_unknown_instruction_is_kept_for_the_instruction_layer():
    node = parse("FROM a\nRUNN echo\n").nodes[1]
    assert node.dump() == 'runn ""'


def test_empty_file_and_only_comments():
    for text in ("", "\n\n", "# just\n# comments\n"):
        with pytest.raises(DockerfileError, match="file with no instructions"):
            parse(text)


def test_file_name_in_errors():
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nENV X\n", file="build/Dockerfile.dev")
    assert str(info.value) == "build/Dockerfile.dev:2:1: ENV must have two arguments"


def test_line_numbers_span_continuations_blank_lines_and_comments():
    text = (
        "# ESCAPE=\\\n\n\n\nFROM brimstone/ubuntu:14.04\n\n\n# TORUN -v x\n\n\nENV GOPATH \\\n/go\n\n\n\n"
        "# Install\nRUN apt-get update \\\n\t&& one \\\n\n\n    && two \\\n# note\n    && three\n\n"
    )
    nodes = parse(text).nodes
    assert [(n.start_line, n.end_line) for n in nodes] == [(5, 5), (11, 12), (17, 23)]


def test_only_empty_continuation_lines_warn():
    text = (
        "FROM alpine:3.6\n\nRUN valid \\\n    continuation\n\nRUN something \\\n\n    following \\\n\n    more\n\n"
        "RUN another \\\n\n    thing\n\nRUN non-indented \\\n# this is a comment\n   after-comment\n\n"
        "RUN indented \\\n    # this is an indented comment\n    comment\n"
    )
    warnings = parse(text).warnings
    assert [w.message for w in warnings] == [
        "Empty continuation line found in: RUN something     following     more",
        "Empty continuation line found in: RUN another     thing",
    ]


@pytest.mark.parametrize(
    "text, words",
    [
        ("foo", ["foo"]),
        ("foo bar", ["foo", "bar"]),
        ("foo\\ bar", ["foo\\ bar"]),
        ("foo=bar", ["foo=bar"]),
        ("foo bar 'abc xyz'", ["foo", "bar", "'abc xyz'"]),
        ('foo bar "abc xyz"', ["foo", "bar", '"abc xyz"']),
        ("àöû", ["àöû"]),
        ('föo bàr "âbc xÿz"', ["föo", "bàr", '"âbc xÿz"']),
    ],
)
def test_arg_words_keep_quotes(text, words):
    assert list(parse(f"FROM a\nARG {text}\n").nodes[1].args) == words


def test_a_very_long_line_is_parsed():
    # BuildKit stops at 64 KiB per line; nothing here needs that limit
    label = "a" * 70_000
    assert parse(f"FROM image\nLABEL test={label}\n").nodes[1].args == ("test", label, "=")
