"""The build benchmark's inputs, generated (never committed): (a)–(c) a context of many files
with `COPY . /app` and three RUN steps; (d) four independent stages of `RUN sleep` joined by a
final stage. `python -m bench.buildcases DIR [--files N] [--mb M]` writes them for the peers."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

COPY_DOCKERFILE = """\
FROM busybox
COPY . /app
RUN find /app -type f | wc -l > /count
RUN echo x > /x
RUN ls /app > /list
"""


def parallel_dockerfile(seconds: float) -> str:
    stages = "".join(f"FROM busybox AS s{i}\nRUN sleep {seconds} && echo {i} > /out{i}\n" for i in range(4))
    final = "FROM busybox\n" + "".join(f"COPY --from=s{i} /out{i} /out{i}\n" for i in range(4))
    return stages + final


def make_context(root: Path, files: int = 5000, total_mb: int = 40, seed: int = 1) -> Path:
    """`files` files over ~files/50 directories, about `total_mb` MiB in all, deterministic."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(COPY_DOCKERFILE)
    mean = total_mb * (1 << 20) // files
    block = rng.randbytes(1 << 16)
    for i in range(files):
        d = root / f"dir{i // 50:03d}"
        if i % 50 == 0:
            d.mkdir(exist_ok=True)
        size = max(1, int(rng.expovariate(1 / mean)))
        data = (block * (size // len(block) + 1))[:size]
        (d / f"file{i:05d}.dat").write_bytes(f"{i}\n".encode() + data)
    return root


def one_file_changed(root: Path, round_: int) -> None:
    """(c): rewrite one file the COPY reads (a different content each round)."""
    (root / "dir000" / "file00000.dat").write_bytes(f"changed {round_}\n".encode())


def make_parallel(root: Path, seconds: float = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(parallel_dockerfile(seconds))
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--mb", type=int, default=40)
    p.add_argument("--sleep", type=float, default=2)
    a = p.parse_args()
    make_context(a.dir / "copy", a.files, a.mb)
    make_parallel(a.dir / "parallel", a.sleep)


if __name__ == "__main__":
    main()
