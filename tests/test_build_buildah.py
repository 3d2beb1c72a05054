"""buildah as the oracle: each case marked `"buildah": true` is built by Debian's buildah
(`buildah bud --isolation chroot`, its own temporary storage, our busybox copied in with skopeo)
and by buildpy; the two file trees must agree path by path (type, mode, owner, content, link
target) and so must the config fields a Dockerfile sets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildpy.cas import archive
from buildpy.cas.store import Store
from buildpy.cli import main
from tests import buildcases

CASES = [c for c in buildcases.case_dirs() if buildcases.expected(c).get("buildah")]
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal")


def differs_on_purpose(path: str) -> bool:
    """Paths where buildah and BuildKit differ by design (BuildKit is our reference)."""
    # buildah leaves the mount points of RUN --mount and its stubs for /etc/hosts, /etc/hostname,
    # /etc/resolv.conf and /run in the image; BuildKit does not (nor do we)
    return path.startswith("/mnt") or path in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run")


@pytest.fixture(scope="module")
def buildah(tmp_path_factory) -> dict:
    from tests.imagekit import busybox_image, busybox_or_skip

    if os.geteuid() != 0:
        pytest.skip("buildah's chroot isolation needs root here")
    for tool in ("buildah", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    busybox_or_skip()
    base = tmp_path_factory.mktemp("oracle")
    store = Store(base / "store")
    busybox_image(store)
    layout = base / "busybox-oci"
    archive.export_oci(store, ["docker.io/library/busybox:latest"], layout)
    storage = ["--root", str(base / "b-root"), "--runroot", str(base / "b-run"), "--storage-driver", "vfs"]
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:latest",
                    f"containers-storage:[vfs@{base / 'b-root'}+{base / 'b-run'}]docker.io/library/busybox:latest"],
                   check=True, capture_output=True)
    return {"store": store.root, "storage": storage, "base": base}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_as_buildah(case: Path, buildah: dict, tmp_path: Path, capsys):
    exp = buildcases.expected(case)
    args = buildcases.build_args(case, exp)
    tag = f"oracle-{case.name}"
    run = subprocess.run(["buildah", *buildah["storage"], "bud", "-q", "--isolation", "chroot", "--pull-never",
                          "--layers=false", "-t", tag, *args, str(case)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "buildah-oci"
    subprocess.run(["buildah", *buildah["storage"], "push", "-q", tag, f"oci:{out}:{tag}"], check=True,
                   capture_output=True)
    theirs_config = buildcases.unpack_oci_layout(out, tmp_path / "theirs")

    root = tmp_path / "store"
    shutil.copytree(buildah["store"], root, symlinks=True)
    rc = main(["--root", str(root), "build", "--progress", "quiet", "-t", "ours:1", *args, str(case)])
    assert rc == 0, capsys.readouterr().err
    ours_config = buildcases.unpack_store_image(Store(root), "ours:1", tmp_path / "ours")

    ours = buildcases.tree(tmp_path / "ours")
    theirs = buildcases.tree(tmp_path / "theirs")
    for tree_ in (ours, theirs):
        for n in tree_.values():
            n.pop("mtime")
    paths = sorted(p for p in set(ours) | set(theirs) if not differs_on_purpose(p))
    diffs = [f"{p}: ours {ours.get(p)} buildah {theirs.get(p)}" for p in paths if ours.get(p) != theirs.get(p)]
    assert not diffs, "\n".join(diffs[:20])
    labels = theirs_config["config"].get("Labels") or {}
    labels.pop("io.buildah.version", None)  # buildah signs its work
    theirs_config["config"]["Labels"] = labels or None
    for key in CONFIG_FIELDS:
        assert ours_config["config"].get(key) == theirs_config["config"].get(key), key
