"""Hostile text: whatever a Dockerfile holds, the front end parses it or says what is wrong.

Arbitrary text and mutations of BuildKit's test files go through the whole front end (parse,
typed instructions, stages, expansion); the only outcomes allowed are a result or DockerfileError, and
every input must finish within a bound (a hang fails the test).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.expand import expand_instruction
from buildpy.grammar.parser import parse
from buildpy.grammar.stages import stages_from
from tests.conftest import conformance_dir

SEEDS = [
    p.read_text(encoding="utf-8", errors="replace")
    for p in sorted(conformance_dir("buildkit", "parser-testfiles").glob("*/Dockerfile"))
]
# pieces that steer mutations into the interesting corners of the syntax
FRAGMENTS = [
    "\\\n", "`\n", "\n", "#", "# escape=`\n", "# escape=\\\n", "<<EOF", "<<-'EOF'", "EOF\n", "\t",
    "[", "]", '"', "'", "${", "}", "$", "--", "--mount=type=cache,target=/x", "--from=0", " AS ",
    "ONBUILD ", "HEALTHCHECK ", "CMD ", "RUN ", "COPY ", "FROM ", "ENV ", "ARG ", "=", "\r\n", "\ufeff",
]
BOUND_SECONDS = 10


@contextmanager
def bounded(seconds: int):
    def hang(signum, frame):
        raise AssertionError(f"front end still running after {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def front_end(text: str) -> None:
    with bounded(BOUND_SECONDS):
        try:
            result = parse(text)
            _typed(result)
        except DockerfileError as e:
            assert str(e).startswith("Dockerfile")
            assert "\n" not in str(e), "an error message is one line"


def _typed(result) -> None:
    dockerfile = stages_from(result)
    env = {"A": "value", "EMPTY": ""}
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            expand_instruction(instruction, env, dockerfile.escape)


@st.composite
def mutated_seed(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "fragment", "duplicate"]))
        if op == "insert":
            text = text[:pos] + draw(st.text(max_size=8)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)):]
        elif op == "fragment":
            text = text[:pos] + draw(st.sampled_from(FRAGMENTS)) + text[pos:]
        else:
            end = min(len(text), pos + draw(st.integers(1, 80)))
            text = text[:end] + text[pos:end] + text[end:]
    return text


# FUZZ_EXAMPLES=6000 for a longer hunt than CI affords
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text())
def test_arbitrary_text(text):
    front_end(text)


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS + list("abc xyz/.:-_0123456789"))).map(lambda p: "FROM a\n" + "".join(p)))
def test_arbitrary_fragments(text):
    front_end(text)


@FUZZ
@given(mutated_seed())
def test_mutated_conformance_files(text):
    front_end(text)


def test_arbitrary_bytes_decode():
    with bounded(BOUND_SECONDS):
        try:
            parse(b"FROM a\nRUN \xff\xfe echo\n")
        except DockerfileError:
            pass
