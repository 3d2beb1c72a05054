"""Front-end speed: parsing a generated 2,000-line Dockerfile, and `buildpy parse` as a process.

Targets (issue 3): the 2,000-line file to typed instructions under 100 ms on one core; a small
file through the whole command under 150 ms including interpreter start. Each figure has a
baseline in the same run: the bare interpreter's start beside the command.

    .venv/bin/python -m pytest bench/test_bench_frontend.py --benchmark-only
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.generate import dockerfile
from buildpy.grammar.parser import parse

SMALL = Path(__file__).resolve().parents[1] / "testdata" / "dockerfiles" / "multistage" / "Dockerfile"
BUILDPY = Path(sys.executable).with_name("buildpy")


@pytest.fixture(scope="module")
def big() -> str:
    text = dockerfile(2000)
    assert text.count("\n") >= 2000
    return text


def typed(text: str):
    """The whole front end short of expansion: nodes, typed instructions, stages and their DAG."""
    from buildpy.grammar.stages import stages_from

    return stages_from(parse(text))


@pytest.mark.benchmark(group="parse-2000-lines")
def test_parse_to_nodes(benchmark, big):
    result = benchmark(parse, big)
    assert len(result.nodes) > 1000


@pytest.mark.benchmark(group="parse-2000-lines")
def test_parse_to_typed_instructions(benchmark, big):
    stages = benchmark(typed, big)
    assert stages


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})


@pytest.mark.benchmark(group="command-start")
def test_interpreter_start_baseline(benchmark):
    benchmark(_run, [sys.executable, "-c", "pass"])


@pytest.mark.benchmark(group="command-start")
def test_buildpy_parse_small_file(benchmark):
    if not BUILDPY.exists():
        pytest.skip(f"no console script beside the interpreter ({BUILDPY}): install the package")
    benchmark(_run, [str(BUILDPY), "parse", str(SMALL)])
