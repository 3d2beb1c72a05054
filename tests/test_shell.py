"""Word expansion against BuildKit's own vectors (envVarTest, wordsTest) and lex_test.go cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildpy.grammar.errors import ExpansionError
from buildpy.grammar.shell import Expansion, _Lexer, expand_word, expand_word_tracked, expand_words

CONFORMANCE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "buildkit"


def _lines(name: str) -> list[tuple[int, str]]:
    """(1-based number, text) of each line, split as Go's bufio.ScanLines does."""
    path = CONFORMANCE / name
    if not path.exists():
        pytest.fail(f"conformance data missing: {path}")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(n, line.removesuffix("\r")) for n, line in enumerate(lines, 1)]


# --- envVarTest (TestShellParser4EnvVars) -------------------------------------------------

ENV_VAR_TEST_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def _env_var_cases() -> list:
    cases = []
    for number, line in _lines("envVarTest"):
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        fields = line.split("|")
        assert len(fields) == 3, f"envVarTest line {number}: {line!r}"
        platform, source, expected = (field.strip() for field in fields)
        assert platform in ("A", "U", "W"), f"envVarTest line {number}: platform {platform!r}"
        if platform == "W":
            continue
        cases.append(pytest.param(source, expected, id=f"L{number}"))
    return cases


@pytest.mark.parametrize(("source", "expected"), _env_var_cases())
def test_env_var_conformance(source: str, expected: str) -> None:
    if expected == "error":
        with pytest.raises(ExpansionError):
            expand_word(source, ENV_VAR_TEST_ENV)
    else:
        assert expand_word(source, ENV_VAR_TEST_ENV) == expected


# --- wordsTest (TestShellParser4Words) ----------------------------------------------------
# lex_test.go runs the file twice, the second time with RawQuotes and SkipUnsetEnv, but it
# reuses the exhausted file handle, so only the first pass ever runs: only it is mirrored here.


def _words_cases() -> list:
    cases = []
    env: dict[str, str] = {}  # BuildKit starts from no environment at all
    for number, line in _lines("wordsTest"):
        if line.startswith("#"):
            continue
        if line.startswith("ENV "):
            key, _, value = line[3:].lstrip(" ").partition("=")
            env[key] = value
            continue
        fields = line.split("|")
        assert len(fields) == 2, f"wordsTest line {number}: {line!r}"
        source = fields[0].strip()
        expected = fields[1].lstrip(" ").split(",")
        cases.append(pytest.param(source, dict(env), expected, id=f"L{number}"))
    return cases


@pytest.mark.parametrize(("source", "env", "expected"), _words_cases())
def test_words_conformance(source: str, env: dict[str, str], expected: list[str]) -> None:
    try:
        result = expand_words(source, env)
    except ExpansionError:
        result = ["error"]
    assert result == expected


# --- TestShellParserMandatoryEnvVars ------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "env", "expected"),
    [
        ("${VAR:?message here$ARG}", {"VAR": "plain", "ARG": "x"}, "plain"),
        ("${VAR?message here$ARG}", {"VAR": "plain", "ARG": "x"}, "plain"),
        ("${VAR?message here$ARG}", {"VAR": "", "ARG": "x"}, ""),
    ],
)
def test_mandatory_vars_present(word: str, env: dict[str, str], expected: str) -> None:
    assert expand_word(word, env) == expected


@pytest.mark.parametrize(
    ("word", "env"),
    [
        ("${VAR:?message here$ARG}", {"VAR": "", "ARG": "x"}),
        ("${VAR:?message here$ARG}", {"ARG": "x"}),
        ("${VAR?message here$ARG}", {"ARG": "x"}),
    ],
)
def test_mandatory_vars_message(word: str, env: dict[str, str]) -> None:
    with pytest.raises(ExpansionError) as caught:
        expand_word(word, env)
    assert caught.value.message == f'failed to process "{word}": VAR: message herex'


@pytest.mark.parametrize(
    ("word", "env", "reason"),
    [
        ("${X?}", {}, "X: is not allowed to be unset"),
        ("${X:?}", {}, "X: is not allowed to be unset"),
        ("${X:?}", {"X": ""}, "X: is not allowed to be empty"),
        ("a${X:?no X here}b", {}, "X: no X here"),
    ],
)
def test_mandatory_default_messages(word: str, env: dict[str, str], reason: str) -> None:
    with pytest.raises(ExpansionError) as caught:
        expand_word(word, env)
    assert caught.value.message == f'failed to process "{word}": {reason}'
    assert caught.value.line == 0  # no location: the caller adds it


# --- TestProcessWithMatches ---------------------------------------------------------------

MATCH_CASES = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set()),
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx  ccc", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx bbb ccc",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO:-}", {}, "", set(), {"FOO"}),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa bbb ", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa  ", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", {"FOO": "xxx", "BAR": ""}, "", {"BAR"}, set()),
    ("${FOO:?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set()),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set()),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set()),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set()),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set()),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    (
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
        "/tmp/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
        "/foo/b/c.txt - /foo/c.txt",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT}",
        {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
        "https://google.de",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt", {"FOO"}, set()),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}, set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
]


@pytest.mark.parametrize(("word", "env", "expected", "matched", "unmatched"), MATCH_CASES)
def test_process_with_matches(
    word: str, env: dict[str, str], expected: str, matched: set[str], unmatched: set[str]
) -> None:
    assert expand_word_tracked(word, env) == Expansion(expected, frozenset(matched), frozenset(unmatched))
    assert expand_word(word, env) == expected


@pytest.mark.parametrize(
    "word",
    [
        "${BAZ?ccc}",
        "${BAR:?bbb}",
        "${BAZ:?ccc}",
        "${BAZ:?}",
        "${FOO=aaa}",
        "${FOO=:aaa}",
        "${FOO=}",
        "${FOO:#}",
        "${FOO:##}",
        "${FOO:%}",
        "${FOO:%%}",
        "${FOO//ww}",
        "${FOO//}",
    ],
)
def test_process_with_matches_errors(word: str) -> None:
    with pytest.raises(ExpansionError):
        expand_word_tracked(word, {"FOO": "xxx", "BAR": ""})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TARGETARCH": "arm", "TARGETVARIANT": "v7"}, "something-v1.2.3.linux-arm-v7.tar.gz"),
        ({"TARGETARCH": "arm64", "TARGETVARIANT": ""}, "something-v1.2.3.linux-arm64.tar.gz"),
        ({"TARGETARCH": "arm64"}, "something-v1.2.3.linux-arm64.tar.gz"),
    ],
)
def test_release_file_name(env: dict[str, str], expected: str) -> None:
    word = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz"
    assert expand_word(word, {"VERSION": "v1.2.3", "TARGETOS": "linux", **env}) == expected


def test_tracking_fast_path_and_case_sensitivity() -> None:
    assert expand_word_tracked("plain", {}) == Expansion("plain", frozenset(), frozenset())
    assert expand_word_tracked("$foo", {"FOO": "x"}) == Expansion("", frozenset(), frozenset({"foo"}))


# --- patterns (TestConvertShellPatternToRegex, TestReversePattern) ------------------------


@pytest.mark.parametrize("pattern", ["\\x", "\\\\\\a", "a\\b"])
def test_invalid_pattern_escape(pattern: str) -> None:
    with pytest.raises(ExpansionError, match=r"invalid pattern .* invalid escape"):
        expand_word("${FOO#" + pattern + "}", {"FOO": "abc"})


def test_pattern_trailing_escape_is_invalid() -> None:
    # A pattern ending in a lone `\` can only come from a variable's value.
    with pytest.raises(ExpansionError, match="invalid escape"):
        expand_word("${FOO#$P}", {"FOO": "abc", "P": "a\\"})


@pytest.mark.parametrize(
    ("word", "value", "expected"),
    [
        ("${V%b\\*}", "ab*", "a"),  # escape pair kept in order when the pattern is reversed
        ("${V%%*/}", "/x/y/", ""),
        ("${V%*/}", "/x/y/", "/x/y"),
        ("${V%/*}", "/x/y/z", "/x/y"),
        ("${V%%/*}", "/x/y/z", ""),
        ("${V##*/}", "/x/y/z", "z"),
        ("${V#*/}", "/x/y/z", "x/y/z"),
        ("${V%?}", "👽🚀🖖", "👽🚀"),
        ("${V#[a]}", "[a]b", "b"),  # no bracket expressions: `[` is literal
        ("${V#a.c}", "abc", "abc"),  # `.` is literal
    ],
)
def test_trim_patterns(word: str, value: str, expected: str) -> None:
    assert expand_word(word, {"V": value}) == expected


@pytest.mark.parametrize(
    ("word", "value", "expected"),
    [
        ("${V//*/x}", "abc", "x"),  # Go skips the empty match right after a match
        ("${V//*/x}", "a\nb", "x\nx"),
        ("${V///-}", "ab", "-a-b-"),
        ("${V//o/'[$0]'}", "foo", "f[o][o]"),  # ReplaceAllString expands `$0` ...
        ("${V/o/'[$0]'}", "foo", "f[$0]o"),  # ... the single replacement does not
        ("${V//o/'$$ $1 ${0}x $'}", "o", "$  ox $"),
        ("${V/?/.}", "한국어", ".국어"),
    ],
)
def test_replace(word: str, value: str, expected: str) -> None:
    assert expand_word(word, {"V": value}) == expected


# --- escape character, options -------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("a`$PWD", "a$PWD"),
        ("a``b", "a`b"),
        ("C:\\path\\$PWD", "C:\\path\\/home"),
        ('"a`"b"', 'a"b'),
        ('"a`tb"', "a`tb"),
        ("a`", "a"),
    ],
)
def test_backtick_escape(word: str, expected: str) -> None:
    assert expand_word(word, {"PWD": "/home"}, "`") == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$X", "$X"),
        ("${X}", "${X}"),
        ("${X:-a b}", "${X:-a b}"),
        ("${X-$Y}", "${X-y}"),
        ("${X:+a}", "${X:+a}"),
        ("${X?oops}", "${X?oops}"),  # no failure for unset names
        ("${X#a}", "${X#a}"),
        ("${X%%a}", "${X%%a}"),
        ("${X//a/b}", "${X/a/b}"),  # BuildKit writes `//` back as `/`
        ("${X:=a}", "${X:=a}"),  # a bad modifier is not noticed for an unset name
        ("${Y:-d}$Y", "yy"),
    ],
)
def test_skip_unset(word: str, expected: str) -> None:
    assert expand_word(word, {"Y": "y"}, skip_unset=True) == expected


def test_skip_unset_still_rejects_bad_modifier_when_set() -> None:
    with pytest.raises(ExpansionError, match=r"unsupported modifier \(:=\)"):
        expand_word("${Y:=a}", {"Y": "y"}, skip_unset=True)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("'a b'", "'a b'"),
        ('"a $Y"', '"a y"'),
        ("x'a'\"b\"", "x'a'\"b\""),
        ("${X:-'q'}", "'q'"),
    ],
)
def test_raw_quotes(word: str, expected: str) -> None:
    assert expand_word(word, {"Y": "y"}, raw_quotes=True) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("a\\ b", "a\\ b"),
        ("a\\$Y", "a\\$Y"),
        ("a\\", "a\\"),
        ('"a\\"b"', 'a\\"b'),
        ('"a\\tb"', "a\\\\tb"),  # BuildKit quirk: an escape before an ordinary char doubles
        ("${X:-a\\ b}", "a b"),  # the default word of ${} never keeps escapes
    ],
)
def test_raw_escapes(word: str, expected: str) -> None:
    assert expand_word(word, {"Y": "y"}, raw_escapes=True) == expected


def test_skip_quotes() -> None:
    assert expand_word("'$Y' \"$Y\"", {"Y": "y"}, skip_quotes=True) == "'y' \"y\""
    assert expand_word("'$Y", {"Y": "y"}, skip_quotes=True) == "'y"


# --- words ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "env", "expected"),
    [
        ("a  b\tc", {}, ["a", "b", "c"]),
        ("", {}, []),
        ("''", {}, []),
        ("a$E b", {"E": ""}, ["a", "b"]),
        ("$S", {"S": " x  y "}, ["x", "y"]),
        ('"$S"', {"S": " x  y "}, [" x  y "]),
        ("a\\ b c", {}, ["a b", "c"]),
        ("cat <<  EOF", {}, ["cat", "<<  EOF"]),  # heredoc opener stays one word
        ("a < b", {}, ["a", "<", "b"]),
        ("a\x1cb", {}, ["a\x1cb"]),  # not white space to Go
        ("a\u3000b", {}, ["a", "b"]),
        # BuildKit bug kept: a ${x<op>word} drops the part of its word before it
        ("pre${X:-d} b", {}, ["d", "b"]),
        ('pre"${X:-d}" b', {}, ["d", "b"]),
        ("pre${X} b", {"X": "x"}, ["prex", "b"]),
    ],
)
def test_words(word: str, env: dict[str, str], expected: list[str]) -> None:
    assert expand_words(word, env) == expected


def test_words_options_used_for_heredoc_detection() -> None:
    line = "RUN cat <<'EOF' > \"$OUT\" ${X:-y}"
    assert expand_words(line, {}, skip_unset=True, raw_quotes=True, raw_escapes=True) == [
        "RUN",
        "cat",
        "<<'EOF'",
        ">",
        '"$OUT"',
        "${X:-y}",
    ]


# --- special parameters, names, errors -----------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$", "$"),
        ("a$", "a$"),
        ("$ x", "$ x"),
        ("$1x", "x"),
        ("$10x", "x"),
        ("$@@", "@"),
        ("$$$", "$"),
        ("$_a1-", "v-"),
        ("$a²", "²"),  # `²` is not a name character to Go
        ("$é", "e"),
        ("${#}", ""),
    ],
)
def test_names(word: str, expected: str) -> None:
    assert expand_word(word, {"_a1": "v", "é": "e"}) == expected


@pytest.mark.parametrize(
    ("word", "reason"),
    [
        ("${", "syntax error: missing '}'"),
        ("${x", "syntax error: missing '}'"),
        ("${x:", "syntax error: missing '}'"),
        ("${x:-a", "syntax error: missing '}'"),
        ("${x:-${y:?e}", "syntax error: missing '}'"),
        ("${x/a", "syntax error: missing '/' in ${}"),
        ("${x/a/b", "syntax error: missing '}'"),
        ("${}", "syntax error: bad substitution"),
        ("${:-x}", "syntax error: bad substitution"),
        ("${{x}", "syntax error: bad substitution"),
        ("${x=y}", "unsupported modifier (=) in substitution"),
        ("${#x}", "unsupported modifier (x) in substitution"),
        ("${x:%a}", "unsupported modifier (:%) in substitution"),
        ("${x:-${y:?e}}", "y: e"),
        ("'a", "unexpected end of statement while looking for matching single-quote"),
        ("a\"", "unexpected end of statement while looking for matching double-quote"),
        ("${x:-'a}", "syntax error: missing '}'"),
    ],
)
def test_error_messages(word: str, reason: str) -> None:
    with pytest.raises(ExpansionError) as caught:
        expand_word(word, {})
    quoted = word.replace('"', '\\"')
    assert caught.value.message == f'failed to process "{quoted}": {reason}'


def test_error_message_quotes_like_go() -> None:
    with pytest.raises(ExpansionError) as caught:
        expand_word('"\t${', {})
    assert caught.value.message.startswith('failed to process "\\"\\t${": ')


# --- the quick paths agree with the full scanner --------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$HOMEé", "x"),  # Go names are Unicode: the name is `HOMEé`
        ("$HOME²", "h²"),
        ("${HOME}é", "hé"),
        ("\ufeff$HOME", "h"),  # Go's text/scanner drops a leading byte-order mark
        ("\ufeffplain", "plain"),
        ("a\ufeff", "a\ufeff"),
        ("${HOME#\ufeffh}", ""),
    ],
)
def test_unicode_edges(word: str, expected: str) -> None:
    assert expand_word(word, {"HOME": "h", "HOMEé": "x"}) == expected


def test_bom_words() -> None:
    assert expand_words("\ufeffa b", {}) == ["a", "b"]


_ALPHABET = list("ab_1 $${}:-+?#%/*'\"\\`<é²\t") + ["${A}", "$A", "${B:-x y}", "${A//a/b}", "$AB"]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(_ALPHABET), max_size=12).map("".join),
    st.sampled_from(["\\", "`"]),
    st.booleans(),
)
def test_quick_paths_agree_with_scanner(word: str, escape: str, skip_unset: bool) -> None:
    env = {"A": "a b", "B": "", "AB": "x"}
    lexer = _Lexer(word, env, escape, skip_unset, False, False)
    try:
        expected: object = lexer.run(lambda: lexer.scan_until(None, False))
        tracked: object = Expansion(str(expected), frozenset(lexer.matched), frozenset(lexer.unmatched))
    except ExpansionError as err:
        expected = tracked = err.message
    try:
        got: object = expand_word(word, env, escape, skip_unset=skip_unset)
        got_tracked: object = expand_word_tracked(word, env, escape, skip_unset=skip_unset)
    except ExpansionError as err:
        got = got_tracked = err.message
    assert got == expected
    assert got_tracked == tracked

    words_lexer = _Lexer(word, env, escape, skip_unset, False, False)
    try:
        expected_words: object = words_lexer.run(lambda: words_lexer.scan_words(False))
    except ExpansionError as err:
        expected_words = err.message
    try:
        got_words: object = expand_words(word, env, escape, skip_unset=skip_unset)
    except ExpansionError as err:
        got_words = err.message
    assert got_words == expected_words
