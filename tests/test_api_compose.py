"""docker-compose 1.29 (Debian's) drives `buildpy serve`: `build` and `up --abort-on-container-exit`
of testdata/compose, two services whose second reads a file the first wrote to a shared volume."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.apiserver import Server, serving

PROJECT = Path(__file__).resolve().parent.parent / "testdata" / "compose"
COMPOSE = "/usr/bin/docker-compose" if os.path.exists("/usr/bin/docker-compose") else shutil.which("docker-compose")

pytestmark = [
    pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (scripts/deps installs it as root)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="running containers needs root here"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("compose")) as srv:
        yield srv


def compose(server: Server, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    env.update(DOCKER_HOST=f"unix://{server.sock}", COMPOSE_PROJECT_NAME="bpt", COMPOSE_INTERACTIVE_NO_CLI="1")
    return subprocess.run([COMPOSE, "--ansi", "never", *args], cwd=PROJECT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_build_then_up(server: Server) -> None:
    r = compose(server, "build")
    assert r.returncode == 0, r.stdout + r.stderr
    names = set(Store(server.root).refs())
    assert {"docker.io/library/compose-writer:1", "docker.io/library/compose-reader:1"} <= names

    r = compose(server, "up", "--abort-on-container-exit", "--exit-code-from", "reader")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "reader got: hello from the writer" in out, out
    volume = server.root / "volumes" / "bpt_shared" / "_data"
    assert (volume / "message").read_text() == "hello from the writer\n"
    assert (volume / "read").exists()

    r = compose(server, "down", "--volumes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not volume.exists()
    ps = compose(server, "ps", "-a", "-q")
    assert ps.returncode == 0 and ps.stdout.strip() == "", ps.stdout + ps.stderr
