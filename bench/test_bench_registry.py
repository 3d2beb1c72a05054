"""Registry transfer speed: `buildpy push` and `buildpy pull` of an image with ten 20 MiB layers
(random bytes, so the gzip layers stay ~20 MiB each) to and from a local `docker-registry`
(distribution, plain http on 127.0.0.1), beside `skopeo copy` of the same image in the same run.

Target (issue): not slower than skopeo. Each benchmark reports in `extra_info` the bytes moved
(manifest + config + layers, as stored) and MB/s of its best and mean round; the second of a
pair to run also reports `speed_vs_skopeo` (buildpy MB/s / skopeo MB/s of the same run, > 1 is
faster) and the pair is printed (run with -s to see it).

    .venv/bin/python -m pytest bench/test_bench_registry.py --benchmark-enable -s

- push: every round goes to a registry started fresh (new storage, new port) in the untimed
  setup, so every blob is really uploaded (no HEAD 200, no cross-repository mount); buildpy's
  remembered origins are deleted too. Ours: `buildpy --root S push NAME HOST/bench/app:1`;
  skopeo's: `skopeo copy oci:DIR:REF docker://HOST/bench/app:1` from the OCI layout that
  `buildpy export --oci` wrote of the same image.
- pull: one registry holding the image; every round downloads into an empty directory: ours
  `buildpy --root FRESH pull HOST/bench/app:1` (a store), skopeo's `skopeo copy
  docker://HOST/bench/app:1 oci:FRESH:x` (an OCI layout): download, verify, write to disk.

Both sides are whole processes (the venv's `buildpy` entry point, /usr/bin/skopeo), timed from
spawn to exit. With `--benchmark-disable` (CI) each runs once, on ten 1 MiB layers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from tests.imagekit import files_tar, image_from_tars
from tests.registries import REGISTRY_BIN, Registry, start_registry

MIB = 1 << 20
LAYERS = 10
FULL_LAYER = 20 * MIB
QUICK_LAYER = 1 * MIB
ROUNDS = 3
NAME = "docker.io/library/bench:1"
REPO_TAG = "bench/app:1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO_ROOT = Path(__file__).resolve().parents[1]
BUILDPY = (REPO_ROOT / ".venv" / "bin" / "buildpy") if (REPO_ROOT / ".venv" / "bin" / "buildpy").is_file() \
    else Path(sys.executable).with_name("buildpy")

# seconds of every timed round, by (direction, tool), for the buildpy/skopeo ratio of this run
_TIMES: dict[tuple[str, str], list[float]] = {}


def _disabled(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_disable", False) or config.getoption("benchmark_skip", False))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed buildpy has its bytecode
    return env


def _skopeo() -> str:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo not installed (Debian package skopeo): it is the baseline")
    return skopeo


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=_env(), timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.strip()}")


def _timed(key: tuple[str, str], cmd: list[str]) -> None:
    start = time.perf_counter()
    _run(cmd)
    _TIMES.setdefault(key, []).append(time.perf_counter() - start)


class Bench:
    """The image once per module: in a store, as an OCI layout, and what a transfer moves."""

    def __init__(self, root: Path, layer_size: int, rounds: int) -> None:
        self.root = root
        self.store_root = root / "store"
        self.rounds = rounds
        store = Store(self.store_root)
        tars = [files_tar({f"data/blob{i}.bin": os.urandom(layer_size)}) for i in range(LAYERS)]
        self.image = image_from_tars(store, tars, NAME, compression="gzip")
        del tars
        self.layers = [d.digest for d in self.image.layers]
        self.bytes = (self.image.manifest_descriptor.size + self.image.config_descriptor.size
                      + sum(d.size for d in self.image.layers))
        self.oci = root / "oci"
        _run([str(BUILDPY), "--root", str(self.store_root), "export", "--oci", "-o", str(self.oci), NAME])
        index = json.loads((self.oci / "index.json").read_text())
        names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
        assert names and names[0], f"no ref name in {self.oci / 'index.json'}: {index}"
        self.oci_ref = names[0]


@pytest.fixture(scope="module")
def bench(request, tmp_path_factory) -> Bench:
    _skopeo()
    if not REGISTRY_BIN.is_file():
        pytest.skip(f"docker-registry not installed ({REGISTRY_BIN}; Debian package docker-registry)")
    quick = _disabled(request.config)
    return Bench(tmp_path_factory.mktemp("bench-registry"), QUICK_LAYER if quick else FULL_LAYER,
                 1 if quick else ROUNDS)


@pytest.fixture(scope="module")
def loaded_registry(bench: Bench, tmp_path_factory) -> Iterator[Registry]:
    """A registry holding the image as HOST/bench/app:1 (pushed once by buildpy, untimed)."""
    reg = start_registry(tmp_path_factory.mktemp("pull-registry"))
    try:
        _run([str(BUILDPY), "--root", str(bench.store_root), "push", NAME, f"{reg.host}/{REPO_TAG}"])
        yield reg
    finally:
        reg.stop()


def _check_pushed(reg: Registry, bench: Bench) -> None:
    missing = set(bench.layers) - reg.blob_digests()
    assert not missing, f"layers not uploaded: {missing}\n{reg.log_tail()}"
    assert reg.storage_bytes() >= sum(d.size for d in bench.image.layers)
    status, _ = reg.get("/v2/bench/app/manifests/1", headers={
        "Accept": f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"})
    assert status == 200, reg.log_tail()


def _report(benchmark, bench: Bench, direction: str, tool: str) -> None:
    times = _TIMES.get((direction, tool), [])
    assert len(times) >= bench.rounds
    times = times[-bench.rounds:]
    info = benchmark.extra_info
    info["bytes"] = bench.bytes
    info["layers"] = LAYERS
    info["mb_per_s"] = round(bench.bytes / min(times) / 1e6, 1)
    info["mb_per_s_mean"] = round(bench.bytes / (sum(times) / len(times)) / 1e6, 1)
    other = (direction, "skopeo" if tool == "buildpy" else "buildpy")
    if len(_TIMES.get(other, [])) >= bench.rounds:
        ours = _TIMES[(direction, "buildpy")][-bench.rounds:]
        theirs = _TIMES[(direction, "skopeo")][-bench.rounds:]
        ratio = min(theirs) / min(ours)  # = buildpy MB/s / skopeo MB/s
        info["speed_vs_skopeo"] = round(ratio, 2)
        print(f"\n{direction}: {bench.bytes / 1e6:.0f} MB, best of {bench.rounds}: "
              f"buildpy {bench.bytes / min(ours) / 1e6:.1f} MB/s ({min(ours):.2f} s), "
              f"skopeo {bench.bytes / min(theirs) / 1e6:.1f} MB/s ({min(theirs):.2f} s), "
              f"buildpy/skopeo speed {ratio:.2f}")


def _fresh_registry_rounds(benchmark, bench: Bench, where: Path, command: Callable[[str], list[str]],
                           key: tuple[str, str]) -> None:
    """Time `command(host)` once per round, each against a registry started for that round."""
    regs: list[Registry] = []

    def retire() -> None:
        if regs:
            reg = regs.pop()
            try:
                _check_pushed(reg, bench)
            finally:
                reg.stop()
                shutil.rmtree(reg.storage.parent, ignore_errors=True)

    def setup():
        retire()
        shutil.rmtree(bench.store_root / "registry" / "origins", ignore_errors=True)
        regs.append(start_registry(where / f"registry{len(_TIMES.get(key, []))}-{time.monotonic_ns()}"))
        return (key, command(regs[-1].host)), {}

    try:
        benchmark.pedantic(_timed, setup=setup, rounds=bench.rounds, iterations=1)
        retire()
    finally:
        for reg in regs:
            reg.stop()


@pytest.mark.benchmark(group="registry-push")
def test_push_skopeo_baseline(benchmark, bench, tmp_path):
    skopeo = _skopeo()
    _fresh_registry_rounds(
        benchmark, bench, tmp_path,
        lambda host: [skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false",
                      f"oci:{bench.oci}:{bench.oci_ref}", f"docker://{host}/{REPO_TAG}"],
        ("push", "skopeo"))
    _report(benchmark, bench, "push", "skopeo")


@pytest.mark.benchmark(group="registry-push")
def test_push_buildpy(benchmark, bench, tmp_path):
    _fresh_registry_rounds(
        benchmark, bench, tmp_path,
        lambda host: [str(BUILDPY), "--root", str(bench.store_root), "push", "-q", NAME, f"{host}/{REPO_TAG}"],
        ("push", "buildpy"))
    _report(benchmark, bench, "push", "buildpy")


def _fresh_dir_rounds(benchmark, bench: Bench, where: Path, command: Callable[[Path], list[str]],
                      key: tuple[str, str], check: Callable[[Path], None]) -> None:
    """Time `command(dir)` once per round, each into a new empty directory."""
    dirs: list[Path] = []

    def retire() -> None:
        if dirs:
            d = dirs.pop()
            check(d)
            shutil.rmtree(d, ignore_errors=True)

    def setup():
        retire()
        dirs.append(where / f"into{len(_TIMES.get(key, []))}-{time.monotonic_ns()}")
        return (key, command(dirs[-1])), {}

    benchmark.pedantic(_timed, setup=setup, rounds=bench.rounds, iterations=1)
    retire()


@pytest.mark.benchmark(group="registry-pull")
def test_pull_skopeo_baseline(benchmark, bench, loaded_registry, tmp_path):
    skopeo = _skopeo()

    def check(d: Path) -> None:
        blobs = {f"sha256:{p.name}" for p in (d / "blobs" / "sha256").iterdir()}
        assert set(bench.layers) <= blobs

    _fresh_dir_rounds(
        benchmark, bench, tmp_path,
        lambda d: [skopeo, "--insecure-policy", "copy", "--src-tls-verify=false",
                   f"docker://{loaded_registry.host}/{REPO_TAG}", f"oci:{d}:x"],
        ("pull", "skopeo"), check)
    _report(benchmark, bench, "pull", "skopeo")


@pytest.mark.benchmark(group="registry-pull")
def test_pull_buildpy(benchmark, bench, loaded_registry, tmp_path):
    def check(d: Path) -> None:
        store = Store(d)
        assert store.get_ref(f"{loaded_registry.host}/{REPO_TAG}") is not None, store.refs()
        for layer in bench.image.layers:
            assert store.has_blob(layer.digest) and store.blob_size(layer.digest) == layer.size

    _fresh_dir_rounds(
        benchmark, bench, tmp_path,
        lambda d: [str(BUILDPY), "--root", str(d), "pull", "-q", f"{loaded_registry.host}/{REPO_TAG}"],
        ("pull", "buildpy"), check)
    _report(benchmark, bench, "pull", "buildpy")
