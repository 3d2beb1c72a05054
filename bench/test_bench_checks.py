"""Build checks' speed: `lint` of the generated 2,000-line Dockerfile (parse included), beside
parsing alone in the same run. Target (issue 9): under 200 ms including parse.

    .venv/bin/python -m pytest bench/test_bench_checks.py --benchmark-enable -q
"""

from __future__ import annotations

import pytest

from bench.generate import dockerfile
from buildpy.checks.lint import lint
from buildpy.grammar.parser import parse


@pytest.fixture(scope="module")
def big() -> bytes:
    text = dockerfile(2000)
    assert text.count("\n") >= 2000
    return text.encode()


@pytest.mark.benchmark(group="lint-2000-lines")
def test_parse_baseline(benchmark, big):
    result = benchmark(parse, big)
    assert len(result.nodes) > 1000


@pytest.mark.benchmark(group="lint-2000-lines")
def test_lint_including_parse(benchmark, big):
    result = benchmark(lint, big)
    assert result.error is None, result.error
