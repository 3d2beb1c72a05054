"""`buildpy run --rm busybox true` as a user types it (a whole process: the CLI, the image
lookup, the container record, the overlay, the sandbox, the cleanup) beside `podman run --rm`
of the same image (loaded from our docker-archive into a podman store of its own, network
none for both, so no network setup is timed on either side), in the same run.

    .venv/bin/python -m pytest bench/test_bench_run.py --benchmark-enable -s
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.imagekit import busybox_image, busybox_or_skip

BUILDPY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "buildpy")
ROUNDS = 10
_results: dict[str, float] = {}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    busybox_or_skip()
    base = tmp_path_factory.mktemp("bench-run")
    store = Store(base / "store")
    busybox_image(store)
    archive = base / "busybox.tar"
    subprocess.run([BUILDPY, "--root", str(store.root), "export", "--docker", "-o", str(archive), "busybox"],
                   check=True)
    podman: list[str] | None = None
    if shutil.which("podman"):
        import tempfile

        run_root = tempfile.mkdtemp(prefix="bp-podman-", dir="/tmp")  # podman wants a runroot under 50 chars
        podman = ["podman", "--root", str(base / "podman-root"), "--runroot", run_root,
                  "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        base_cmd = list(podman)
        load = subprocess.run([*podman, "load", "-i", str(archive)], capture_output=True, text=True)
        loaded = [line.split(": ", 1)[1] for line in (load.stdout + load.stderr).splitlines()
                  if line.startswith("Loaded image")]
        image = loaded[0].split(",")[0].strip() if loaded else "localhost/busybox:latest"
        probe = subprocess.run([*podman, "run", "--rm", "--network", "none", image, "true"],
                               capture_output=True, text=True)
        if load.returncode != 0 or probe.returncode != 0:
            failed = load if load.returncode != 0 else probe
            podman = failed.stderr.strip().splitlines()[-1:] or ["podman failed"]
        else:
            podman = [*podman, image]
    yield store, podman
    if shutil.which("podman"):  # podman leaves its storage mounted: unmount it, or tmp cleanup fails
        subprocess.run([*base_cmd, "system", "reset", "-f"], capture_output=True)
        with open("/proc/self/mounts") as f:
            for line in reversed(f.read().splitlines()):
                target = line.split()[1]
                if target.startswith((str(base), run_root)):
                    subprocess.run(["umount", "-l", target], capture_output=True)


def _time(benchmark, args: list[str]) -> None:
    def once() -> None:
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    once()  # warm: page cache, podman's first-use setup
    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)


def _report(benchmark, name: str) -> None:
    if benchmark.stats is None:
        return
    _results[name] = benchmark.stats.stats.median
    if len(_results) == 2:
        ratio = _results["buildpy"] / _results["podman"]
        benchmark.extra_info["buildpy_over_podman"] = ratio
        print(f"\nrun --rm true, median of {ROUNDS}: buildpy {_results['buildpy'] * 1000:.0f} ms, "
              f"podman {_results['podman'] * 1000:.0f} ms, buildpy/podman {ratio:.2f}")


@pytest.mark.benchmark(group="run-true")
def test_buildpy_run_true(benchmark, images):
    store, _ = images
    _time(benchmark, [BUILDPY, "--root", str(store.root), "run", "--rm", "--network", "none", "busybox", "true"])
    _report(benchmark, "buildpy")


@pytest.mark.benchmark(group="run-true")
def test_podman_run_true(benchmark, images):
    _, podman = images
    if podman is None:
        pytest.skip("podman is not installed (Debian package podman)")
    if podman and not podman[0] == "podman":
        pytest.skip(f"podman cannot run a container here: {podman[0]}")
    *command, image = podman
    _time(benchmark, [*command, "run", "--rm", "--network", "none", image, "true"])
    _report(benchmark, "podman")
