"""The command line as users and scripts meet it: exit codes, one-line errors, start-up cost."""

from __future__ import annotations

import subprocess
import sys

from buildpy import __version__


def buildpy(*args: str, cwd=None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "buildpy", *args], cwd=cwd, input=stdin, capture_output=True
    )


def test_version():
    result = buildpy("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"buildpy {__version__}"


def test_help_lists_commands():
    result = buildpy("--help")
    assert result.returncode == 0
    assert b"parse" in result.stdout
    assert buildpy("parse", "--help").returncode == 0


def test_no_command_is_a_usage_error():
    assert buildpy().returncode == 2


def test_dockerfile_mistake_is_one_line_naming_the_line(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM a\nRUN echo \\\n  hi\nENV ONLYKEY\n")
    result = buildpy("parse", "Dockerfile", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.decode() == "error: Dockerfile:4:1: ENV must have two arguments\n"
    assert b"Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM a\nENV ONLYKEY\n")
    result = buildpy("--debug", "parse", "Dockerfile", cwd=tmp_path)
    assert result.returncode != 0
    assert b"Traceback" in result.stderr


def test_missing_file(tmp_path):
    result = buildpy("parse", "nope/Dockerfile", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("error: cannot read nope/Dockerfile:")


def test_parse_from_stdin():
    result = buildpy("parse", "-", stdin=b"FROM scratch\nCOPY a b\n")
    assert result.returncode == 0
    assert result.stdout == b'(from "scratch")\n(copy "a" "b")\n'


def test_startup_imports_only_what_the_command_uses():
    """`--version` imports no parser; `parse` imports neither lark nor anything past the grammar."""
    probe = (
        "import sys, runpy; sys.argv = ['buildpy'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('buildpy', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'lark', 'tqdm', 'blake3', 'zstandard'}"
        " or m.startswith(('buildpy.planner', 'buildpy.cas', 'buildpy.sandbox', 'buildpy.executor')))\n"
        "print('MODULES', ' '.join(heavy), 'PARSER' if 'buildpy.grammar.parser' in sys.modules else '')\n"
    )
    version = subprocess.run([sys.executable, "-c", probe, "--version"], capture_output=True, text=True)
    assert version.stdout.strip().splitlines()[-1] == "MODULES"
    dump = subprocess.run(
        [sys.executable, "-c", probe, "parse", "-"], input="FROM a\n", capture_output=True, text=True
    )
    assert dump.stdout.strip().splitlines()[-1] == "MODULES  PARSER"
