"""Sandbox overhead: an empty step (`/bin/true` on a busybox rootfs, network none) from the
caller's side: making the upper and work dirs, `run` (namespaces, id maps, overlay, mounts,
pivot_root, privileges, seccomp, the process, teardown) and removing the dirs; and the whole
`RUN true` as step.py runs it (snapshot lookup, temp dirs, `run`, the diff finding no change,
cleanup). Median of 50. Target (issue 5): under 25 ms.

Beside it, in the same run: `runc run` and `crun run` of the same rootfs (a `runc spec
--rootless` config: user, pid, ipc, uts, mount namespaces, plus a network namespace), the child
started as a fresh interpreter per step instead of by the fork server, and the bare interpreter
start that the fork server saves.

    .venv/bin/python -m pytest bench/test_bench_sandbox.py --benchmark-only
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildpy.sandbox import run as run_module
from buildpy.sandbox.run import run
from buildpy.sandbox.spec import Overlay, Process, SandboxSpec
from tests.sandboxkit import busybox_rootfs, sandbox_or_skip

ROUNDS = 50


@pytest.fixture(scope="module")
def lower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sandbox_or_skip()
    return busybox_rootfs(tmp_path_factory.mktemp("bench-sandbox") / "lower")


def _empty_step(lower: Path, base: Path, counter: itertools.count) -> None:
    step = base / f"step{next(counter)}"
    for name in ("upper", "work", "root"):
        (step / name).mkdir(parents=True)
    spec = SandboxSpec(rootfs=step / "root", process=Process(args=("/bin/true",)),
                       overlay=Overlay((lower,), step / "upper", step / "work"))
    assert run(spec) == 0
    shutil.rmtree(step)


@pytest.mark.benchmark(group="empty-step")
def test_buildpy_run_empty_step(benchmark, lower, tmp_path):
    counter = itertools.count()
    _empty_step(lower, tmp_path, counter)  # the fork server's start and the seccomp compile: once per build
    benchmark.pedantic(_empty_step, args=(lower, tmp_path, counter), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="empty-step")
def test_buildpy_step_run_true(benchmark, tmp_path):
    """`RUN true` through step.run_step, diff included (an empty change: no layer written)."""
    sandbox_or_skip()
    from buildpy.cas.store import Store
    from buildpy.sandbox import step
    from tests.imagekit import busybox_image

    store = Store(tmp_path / "store")
    image = busybox_image(store)

    def once() -> None:
        result = step.run_step(store, layers=image.layers, diff_ids=image.diff_ids, process=Process(("/bin/true",)))
        assert (result.exit_code, result.layer) == (0, None)

    once()  # unpacks the snapshot, starts the fork server: once per build
    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="empty-step")
def test_buildpy_run_empty_step_fresh_interpreter(benchmark, lower, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "use_forkserver", False)
    counter = itertools.count()
    _empty_step(lower, tmp_path, counter)
    benchmark.pedantic(_empty_step, args=(lower, tmp_path, counter), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="empty-step")
def test_interpreter_start_baseline(benchmark):
    argv = [sys.executable, "-I", "-S", "-c", "pass"]
    benchmark.pedantic(subprocess.run, args=(argv,), kwargs={"check": True}, rounds=ROUNDS, iterations=1)


def _bundle(lower: Path, base: Path, runtime: str) -> Path:
    """An OCI bundle over the same rootfs: `runc spec --rootless`, running /bin/true, with a
    network namespace (network none) and without cgroup namespace and mount (crun refuses a
    hybrid cgroup host otherwise)."""
    bundle = base / f"bundle-{runtime}"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--rootless", "--bundle", str(bundle)], check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(lower), "readonly": True}
    config["process"].update(terminal=False, args=["/bin/true"])
    linux = config["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "cgroup"] + [{"type": "network"}]
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _runtime_argv(runtime: str, bundle: Path) -> list[str]:
    """How to call the runtime here: crun gives up on a hybrid cgroup v1/v2 host even without
    cgroups, so it runs in a mount namespace where the v2 hierarchy is hidden (the wrapper's
    cost is part of its figure)."""
    if shutil.which(runtime) is None:
        pytest.skip(f"{runtime} is not installed (Debian package {runtime})")
    if os.geteuid() != 0:
        pytest.skip(f"{runtime} runs as root here (its rootless mode needs XDG_RUNTIME_DIR and cgroup delegation)")
    argv = [runtime] + (["--cgroup-manager=disabled"] if runtime == "crun" else []) + ["run", "--bundle", str(bundle)]
    probe = subprocess.run(argv + ["probe"], capture_output=True, text=True)
    if probe.returncode == 0:
        return argv
    if runtime == "crun" and "hybrid" in probe.stderr and shutil.which("unshare"):
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"', "sh", *argv]
    pytest.fail(f"{runtime} cannot run the bundle: {probe.stderr.strip()}")


@pytest.mark.parametrize("runtime", ["runc", "crun"])
@pytest.mark.benchmark(group="empty-step")
def test_oci_runtime_empty_step(benchmark, lower, tmp_path, runtime):
    argv = _runtime_argv(runtime, _bundle(lower, tmp_path, runtime))
    counter = itertools.count()

    def once() -> None:
        subprocess.run(argv + [f"bench-{os.getpid()}-{next(counter)}"], check=True)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
