"""SIGKILL at random moments: `buildpy load`, `export`, `prune`, `tag` and `rmi` killed part-way
never leave a store that fsck finds broken or that the next command rejects."""

from __future__ import annotations

import random
import subprocess
import time

from buildpy.cas.gc import fsck
from buildpy.cas.store import Store
from tests.test_cas_cli import BUILDPY, ok, oci_layout, run

ROUNDS = 20
BIG = "docker.io/library/big:1"


def test_sigkill_at_random_moments(tmp_path):
    root = tmp_path / "store"
    rng = random.Random(20261123)  # the same operations and delays each run; what they hit varies
    # incompressible layers, so that load and export spend a while copying and hashing
    big, other = tmp_path / "big", tmp_path / "other"
    oci_layout(big, BIG, {"big": rng.randbytes(8 << 20), "small": "s"}, compression="")
    oci_layout(other, "docker.io/library/other:1", {"other": rng.randbytes(2 << 20)}, compression="")

    def refs() -> set[str]:
        return set(Store(root).refs())

    operations = ["load", "export-oci", "export-tar", "export-docker", "prune", "tag", "rmi"]
    for i in range(ROUNDS):
        op = operations[i % len(operations)]
        if op == "load":
            if BIG in refs():
                ok(root, "rmi", "big:1")
            ok(root, "prune")  # so that the load has every blob to copy again
            args = ["load", str(big)]
        else:
            if BIG not in refs():
                ok(root, "load", str(big))
            if op.startswith("export"):
                fmt, suffix = {"export-oci": ("--oci", ""), "export-tar": ("--oci", ".tar"),
                               "export-docker": ("--docker", ".tar")}[op]
                args = ["export", fmt, "-o", str(tmp_path / f"out{i}{suffix}"), "big:1"]
            elif op == "prune":
                ok(root, "load", str(other))
                ok(root, "rmi", "other:1")  # garbage for the prune to sweep
                args = ["prune"]
            elif op == "tag":
                args = ["tag", "big:1", f"copy:{i}"]
            else:
                args = ["rmi", *sorted(n for n in refs() if "/copy:" in n), "big:1"]
        proc = subprocess.Popen([*BUILDPY, "--root", str(root), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.03, 0.35))
        proc.kill()
        proc.wait()
        errors = [str(p) for p in fsck(Store(root)) if p.level == "error"]
        assert errors == [], f"round {i}, `buildpy {' '.join(args)}` killed: {errors}"
    # the next commands work, and prune leaves nothing behind
    assert run(root, "fsck").returncode == 0
    assert ok(root, "load", str(big)) == "Loaded image: big:1\n"
    ok(root, "prune")
    assert fsck(Store(root)) == []
    assert "big" in ok(root, "images")
