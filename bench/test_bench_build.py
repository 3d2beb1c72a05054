"""`buildpy build` as a whole process (the venv's entry point, bytecode compiled), on inputs made
by `bench/buildcases.py`: (a) a 5,000-file, ~40 MB context with COPY and three RUN steps, cold
(a fresh store holding only the base image); (b) the same rebuilt with nothing changed; (c)
after rewriting one file the COPY reads; (d) four independent stages of `RUN sleep 2` joined by
a final stage. The baseline in the same run: the interpreter starting and exiting
(`python -c pass`). Peers (BuildKit, buildah) are timed by `bench/peers.sh` on the same inputs.

Under `--benchmark-disable` (CI) each runs once on small inputs (500 files, 4 MB, sleep 0.2),
as a test that the builds succeed and that (b) runs no step.

    .venv/bin/python -m pytest bench/test_bench_build.py --benchmark-only
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import buildcases

BUILDPY = Path(sys.executable).with_name("buildpy")
ROUNDS = 5


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed buildpy has its bytecode
    return env


def _build(store: Path, context: Path, *extra: str) -> str:
    run = subprocess.run([str(BUILDPY), "--root", str(store), "build", "--progress", "plain", "-t", "bench:1",
                          *extra, str(context)], capture_output=True, text=True, env=_env())
    assert run.returncode == 0, run.stderr
    return run.stderr


@pytest.fixture(scope="module")
def sizes(request) -> dict:
    if request.config.getoption("benchmark_disable"):
        return {"files": 500, "mb": 4, "sleep": 0.2, "rounds": 1}
    return {"files": 5000, "mb": 40, "sleep": 2, "rounds": ROUNDS}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from buildpy.cas.store import Store
    from tests.imagekit import busybox_image, busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    busybox_or_skip()
    root = tmp_path_factory.mktemp("bench-build") / "base"
    busybox_image(Store(root))
    subprocess.run([sys.executable, "-c", "import compileall; compileall.compile_dir('buildpy', quiet=1)"],
                   env=_env(), check=True, cwd=Path(__file__).resolve().parents[1])
    return root


@pytest.fixture(scope="module")
def copy_context(tmp_path_factory, sizes) -> Path:
    return buildcases.make_context(tmp_path_factory.mktemp("ctx") / "copy", sizes["files"], sizes["mb"])


def _fresh(base: Path, where: Path, n: list[int]) -> Path:
    n[0] += 1
    store = where / f"store{n[0]}"
    shutil.copytree(base, store, symlinks=True)
    return store


@pytest.mark.benchmark(group="build")
def test_baseline_interpreter(benchmark):
    benchmark.pedantic(subprocess.run, args=([sys.executable, "-c", "pass"],), kwargs={"check": True},
                       rounds=10, iterations=1)


@pytest.mark.benchmark(group="build")
def test_a_cold(benchmark, base, copy_context, sizes, tmp_path):
    n = [0]
    stores: list[Path] = []

    def setup():
        stores.append(_fresh(base, tmp_path, n))
        return (stores[-1], copy_context), {}

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    benchmark.pedantic(_build, setup=setup, rounds=sizes["rounds"], iterations=1)
    benchmark.extra_info["peak_rss_mb"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


@pytest.mark.benchmark(group="build")
def test_b_no_change(benchmark, base, copy_context, sizes, tmp_path):
    store = _fresh(base, tmp_path, [0])
    _build(store, copy_context)
    _build(store, copy_context)  # the stat cache and the fingerprint in place
    err = benchmark.pedantic(_build, args=(store, copy_context), rounds=sizes["rounds"] * 4, iterations=1)
    assert "DONE" not in err


@pytest.mark.benchmark(group="build")
def test_c_one_file_changed(benchmark, base, copy_context, sizes, tmp_path):
    store = _fresh(base, tmp_path, [0])
    _build(store, copy_context)
    rounds = [0]

    def setup():
        rounds[0] += 1
        buildcases.one_file_changed(copy_context, rounds[0])
        return (store, copy_context), {}

    err = benchmark.pedantic(_build, setup=setup, rounds=sizes["rounds"], iterations=1)
    assert "1 file changed" in err


@pytest.mark.benchmark(group="build")
def test_d_parallel_stages(benchmark, base, sizes, tmp_path):
    context = buildcases.make_parallel(tmp_path / "parallel", sizes["sleep"])
    n = [0]

    def setup():
        return (_fresh(base, tmp_path, n), context), {}

    benchmark.pedantic(_build, setup=setup, rounds=sizes["rounds"], iterations=1)
