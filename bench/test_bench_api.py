"""A no-change rebuild through the Engine API — `DOCKER_BUILDKIT=0 docker build` (the real
docker CLI) against `buildpy serve`'s socket — beside `buildpy build` of the same context (the
venv's script, a whole process), in the same run. Both were built once first, so both answer by
the no-change fast path. Target (the Engine API issue): the API adds at most 30 ms.

    .venv/bin/python -m pytest bench/test_bench_api.py --benchmark-enable -s
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.apiserver import DOCKER, Server, short_dir, start
from tests.imagekit import busybox_image, busybox_or_skip

REPO = Path(__file__).resolve().parents[1]
BUILDPY = str(REPO / ".venv" / "bin" / "buildpy")
CONTEXT = REPO / "testdata" / "api-bench"
ROUNDS = 20
TARGET = 0.030  # seconds the API may add
_results: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    if DOCKER is None:
        pytest.skip("the docker CLI is not installed (Debian package docker.io)")
    busybox_or_skip()
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()  # the context has a RUN step
    base = tmp_path_factory.mktemp("bench-api")
    root = base / "store"
    busybox_image(Store(root))
    sockdir = short_dir()
    server = start(root, str(sockdir / "s.sock"), base / "serve.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{server.sock}", DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(base / "docker-config"),
               DOCKER_CLI_HINTS="false")
    try:
        for args in (_docker(), _cli(root)):  # the first build of each: every step runs once
            r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
        yield server, env
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def _docker() -> list[str]:
    assert DOCKER is not None
    return [DOCKER, "build", "-t", "bench:api", str(CONTEXT)]


def _cli(root: Path) -> list[str]:
    return [BUILDPY, "--root", str(root), "build", "-t", "bench:cli", str(CONTEXT)]


def _time(benchmark, args: list[str], env: dict[str, str]) -> None:  # noqa: ANN001
    def once() -> None:
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    once()  # warm: the page cache, the server's first no-change answer
    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)


def _report(benchmark, name: str) -> None:  # noqa: ANN001
    if benchmark.stats is None:
        return
    _results[name] = benchmark.stats.stats.median
    if len(_results) == 2:
        api, cli = _results["api"], _results["cli"]
        benchmark.extra_info["api_over_cli"] = api / cli
        benchmark.extra_info["api_added_ms"] = (api - cli) * 1000
        print(f"\nno-change rebuild, median of {ROUNDS}: docker build via the API {api * 1000:.0f} ms, "
              f"buildpy build {cli * 1000:.0f} ms, api/cli {api / cli:.2f}, "
              f"the API adds {(api - cli) * 1000:+.0f} ms (target: at most {TARGET * 1000:.0f})")
        assert api - cli <= TARGET, f"the API adds {(api - cli) * 1000:.0f} ms to a no-change rebuild"


@pytest.mark.benchmark(group="no-change-rebuild")
def test_buildpy_build_cli(benchmark, setup) -> None:  # noqa: ANN001
    server, env = setup
    _time(benchmark, _cli(server.root), env)
    _report(benchmark, "cli")


@pytest.mark.benchmark(group="no-change-rebuild")
def test_docker_build_via_api(benchmark, setup) -> None:  # noqa: ANN001
    _, env = setup
    _time(benchmark, _docker(), env)
    _report(benchmark, "api")
