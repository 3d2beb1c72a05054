"""BuildKit's parser test files: every Dockerfile dumps exactly to its `result`; the negative ones fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.parser import parse
from tests.conftest import conformance_dir

POSITIVE = sorted(p for p in conformance_dir("buildkit", "parser-testfiles").iterdir() if p.is_dir())
NEGATIVE = sorted(p for p in conformance_dir("buildkit", "parser-testfiles-negative").iterdir() if p.is_dir())


@pytest.mark.parametrize("case", POSITIVE, ids=[p.name for p in POSITIVE])
def test_dump_matches_buildkit(case):
    expected = (case / "result").read_text(encoding="utf-8")
    assert parse((case / "Dockerfile").read_bytes()).dump() == expected


@pytest.mark.parametrize("case", NEGATIVE, ids=[p.name for p in NEGATIVE])
def test_negative_file_is_rejected(case):
    with pytest.raises(DockerfileError) as info:
        parse((case / "Dockerfile").read_bytes())
    assert str(info.value).startswith("Dockerfile")
    assert info.value.message


def test_cli_dump_is_byte_identical():
    """`buildpy parse` prints the same bytes (the whole command, as users run it)."""
    for case in POSITIVE[:5]:
        out = subprocess.run(
            [sys.executable, "-m", "buildpy", "parse", "Dockerfile"],
            cwd=case,
            capture_output=True,
            check=True,
        ).stdout
        assert out == (case / "result").read_bytes()
