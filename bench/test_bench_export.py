"""Export speed: one 256 MiB layer of a realistic file mix compressed into the store with gzip and
with zstd, beside `tar | gzip -6` and `tar | zstd -T0 -3` on the same tree in the same run.

Targets (issue 4): our gzip at least as fast as `tar | gzip -6`; our zstd within 1.5x of
`tar | zstd -T0`. Each benchmark reports MB/s of uncompressed tar in `extra_info`.

    .venv/bin/python -m pytest bench/test_bench_export.py --benchmark-enable --benchmark-min-rounds=3

With `--benchmark-disable` (CI) every benchmark runs once on an 8 MiB tree, as a test.

Our side is the whole export: `tar -C DIR -cf - . | add_layer(...)` (the tar comes from the same
tar(1) as the baselines, so the figures compare compression pipelines, not tar writers), then the
image's config and manifest, then `export_oci` of it to an OCI tar, fsynced.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from buildpy.cas.archive import export_oci
from buildpy.cas.image import new_config, write_image
from buildpy.cas.layers import add_layer
from buildpy.cas.store import Store

MIB = 1 << 20
FULL_SIZE = 256 * MIB
QUICK_SIZE = 8 * MIB
# Bump when the generator changes, so a cached tree of the old mix is not reused.
GENERATOR_VERSION = 1

_WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an not have def "
    "return self if else elif import class none true false int str list dict value name path file "
    "error data config server client request response user id type key index buffer length size "
    "count result status message version build layer image digest manifest json http https tcp "
    "usr lib bin etc var share local include python3 site packages module function object static "
    "const void char unsigned struct include define ifdef endif license copyright public private "
    "INFO DEBUG WARN ERROR started stopped connected listening port timeout retry 200 404 500"
).split()


def _text_lines(rng: random.Random, n: int) -> list[str]:
    """A pool of source-, config- and log-like lines; files are drawn from it, so they repeat
    lines and words as real text does, at a realistic gzip ratio (about 3x)."""
    weights = [1.0 / (i + 1) for i in range(len(_WORDS))]  # Zipf-like word frequencies
    lines = []
    for _ in range(n):
        indent = " " * (4 * rng.randrange(4))
        words = rng.choices(_WORDS, weights, k=rng.randrange(2, 14))
        if rng.random() < 0.3:
            words.append(str(rng.randrange(10**9)))
        if rng.random() < 0.2:
            words.insert(0, f"{rng.randrange(2000, 2025)}-{rng.randrange(1, 13):02}-{rng.randrange(1, 29):02}")
        lines.append(indent + " ".join(words) + rng.choice(("", ":", ";", ",", " {", " }", "()")) + "\n")
    return lines


def _text(rng: random.Random, pool: list[str], size: int) -> bytes:
    out = "".join(rng.choices(pool, k=size // 40 + 1)).encode()
    return out[:size]


def _binary(rng: random.Random, size: int, snippets: list[bytes]) -> bytes:
    """Executable-like: reused instruction-like snippets (skewed bytes, so LZ matches and Huffman
    both find something) with a random stretch (packed data) here and there."""
    parts, done = [], 0
    while done < size:
        if rng.random() < 0.1:
            part = rng.randbytes(rng.randrange(256, 8192))
        else:
            part = b"".join(rng.choices(snippets, k=32))
        parts.append(part)
        done += len(part)
    return b"".join(parts)[:size]


def generate_tree(root: Path, size: int, seed: int = 4) -> None:
    """`size` bytes of files under `root`, the same for the same size and seed: ~45% text files,
    ~30% executable-like binaries, ~15% incompressible (compressed assets), ~10% in many small
    files (100 B to 4 KiB) spread over a directory tree."""
    rng = random.Random(seed)
    pool = _text_lines(rng, 20000)
    # 256 byte values mapped onto 40, most of them onto a few: about 4 bits of entropy a byte
    table = bytes(rng.choice(range(40)) if rng.random() < 0.5 else rng.choice(range(6)) for _ in range(256))
    snippets = [rng.randbytes(rng.randrange(8, 96)).translate(table) for _ in range(1024)]
    budgets = {"text": size * 45 // 100, "bin": size * 30 // 100, "rand": size * 15 // 100}
    budgets["small"] = size - sum(budgets.values())
    dirs = [root / f"usr/{a}/{b}" for a in ("lib", "share", "bin", "include") for b in range(8)]
    dirs += [root / f"app/src/m{i}" for i in range(16)] + [root / f"var/log/s{i}" for i in range(4)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    serial = 0
    for kind, budget in budgets.items():
        while budget > 0:
            if kind == "small":
                n = rng.randrange(100, 4096)
            else:  # log-uniform 4 KiB .. 4 MiB
                n = int(4096 * 2 ** (rng.random() * 10))
            n = min(n, budget)
            if kind in ("text", "small"):
                data = _text(rng, pool, n)
            elif kind == "bin":
                data = _binary(rng, n, snippets)
            else:
                data = rng.randbytes(n)
            path = rng.choice(dirs) / f"{kind}{serial}"
            path.write_bytes(data)
            os.utime(path, (1_700_000_000, 1_700_000_000))
            serial += 1
            budget -= n
    for d in dirs:
        os.utime(d, (1_700_000_000, 1_700_000_000))


def cached_tree(size: int) -> Path:
    """The generated tree of `size` bytes, made once per machine under the temp dir."""
    base = Path(tempfile.gettempdir()) / "buildpy-bench"
    tree = base / f"export-v{GENERATOR_VERSION}-{size // MIB}MiB"
    if not tree.is_dir():
        base.mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=base, prefix=".gen-"))
        generate_tree(work, size)
        try:
            os.rename(work, tree)  # published whole, so a killed run leaves no half tree
        except OSError:  # another run won the race
            shutil.rmtree(work, ignore_errors=True)
    return tree


@pytest.fixture(scope="module")
def tree(request) -> Path:
    disabled = request.config.getoption("benchmark_disable", False) or request.config.getoption(
        "benchmark_skip", False
    )
    return cached_tree(QUICK_SIZE if disabled else FULL_SIZE)


@pytest.fixture(scope="module")
def tar_size(tree: Path) -> int:
    out = subprocess.run(f"tar -C {tree} -cf - . | wc -c", shell=True, check=True, capture_output=True)
    return int(out.stdout)


def _pipeline(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def _ours(store_root: Path, tree: Path, compression: str) -> str:
    store = Store(store_root)
    proc = subprocess.Popen(["tar", "-C", str(tree), "-cf", "-", "."], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with store.lease():
        layer = add_layer(store, proc.stdout, compression)
        if proc.wait() != 0:
            raise RuntimeError("tar failed")
        config = new_config(created="2024-01-01T00:00:00Z")
        config["rootfs"]["diff_ids"].append(layer.diff_id)
        image = write_image(store, config, [layer.descriptor])
        store.set_ref("docker.io/library/bench:1", image.manifest_descriptor)
        out = store_root.parent / f"export-{compression}.tar"
        export_oci(store, ["docker.io/library/bench:1"], out)
    return layer.descriptor.digest


def _report(benchmark, tar_size: int) -> None:
    benchmark.extra_info["tar_bytes"] = tar_size
    if benchmark.stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["mb_per_s"] = round(tar_size / benchmark.stats.stats.min / 1e6, 1)


@pytest.mark.benchmark(group="export-gzip")
def test_tar_gzip6_baseline(benchmark, tree, tar_size):
    benchmark(_pipeline, f"tar -C {tree} -cf - . | gzip -6 > /dev/null")
    _report(benchmark, tar_size)


@pytest.mark.benchmark(group="export-gzip")
def test_buildpy_gzip(benchmark, tree, tar_size, tmp_path):
    digest = benchmark(_ours, tmp_path / "store", tree, "gzip")
    blob = Store(tmp_path / "store").blob_path(digest)
    subprocess.run(["gzip", "-t", str(blob)], check=True)
    _report(benchmark, tar_size)
    benchmark.extra_info["ratio"] = round(tar_size / blob.stat().st_size, 2)


@pytest.mark.benchmark(group="export-zstd")
def test_tar_zstd_baseline(benchmark, tree, tar_size):
    if shutil.which("zstd") is None:
        pytest.skip("zstd(1) is not installed (apt-get install zstd)")
    benchmark(_pipeline, f"tar -C {tree} -cf - . | zstd -q -T0 -3 > /dev/null")
    _report(benchmark, tar_size)


@pytest.mark.benchmark(group="export-zstd")
def test_buildpy_zstd(benchmark, tree, tar_size, tmp_path):
    digest = benchmark(_ours, tmp_path / "store", tree, "zstd")
    blob = Store(tmp_path / "store").blob_path(digest)
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", "-t", str(blob)], check=True)
    _report(benchmark, tar_size)
    benchmark.extra_info["ratio"] = round(tar_size / blob.stat().st_size, 2)
