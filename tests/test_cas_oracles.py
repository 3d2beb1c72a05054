"""Real tools judge our exports: skopeo, umoci and podman (Debian packages, installed by
scripts/deps) must read what `buildpy export` writes, and buildpy must load what they write."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from buildpy.cas import archive
from buildpy.cas.image import load_image
from buildpy.cas.store import Store
from tests.imagekit import busybox_image

CONTENT = "made by buildpy\n"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/deps installs it as root)")
    return path


def check(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One busybox image with /a/file, exported three ways."""
    tmp = tmp_path_factory.mktemp("oracle")
    store = Store(tmp / "store")
    name = f"localhost/buildpy-oracle-{uuid.uuid4().hex[:8]}:1"
    image = busybox_image(store, name, extra={"a/file": CONTENT})
    with store.lease():
        archive.export_oci(store, [name], tmp / "oci")
        archive.export_oci(store, [name], tmp / "oci.tar")
        archive.export_docker(store, [name], tmp / "docker.tar")
    return tmp, name, image


def test_skopeo_inspects_and_copies(exported):
    tmp, name, image = exported
    skopeo = tool("skopeo")
    for transport in (f"oci-archive:{tmp}/oci.tar", f"oci:{tmp}/oci:1", f"docker-archive:{tmp}/docker.tar"):
        info = json.loads(check(skopeo, "inspect", transport).stdout)
        assert info["Layers"] == [d.digest for d in image.layers] or transport.startswith("docker-archive")
        assert info["Os"] == "linux"
    raw = json.loads(check(skopeo, "inspect", "--raw", f"oci-archive:{tmp}/oci.tar").stdout)
    assert raw["config"]["digest"] == image.id
    check(skopeo, "copy", f"oci-archive:{tmp}/oci.tar", f"dir:{tmp}/copied")
    assert (tmp / "copied" / "manifest.json").is_file()
    assert (tmp / "copied" / image.layers[0].digest.partition(":")[2]).is_file()


def test_umoci_unpacks_the_layout(exported, tmp_path):
    tmp, _, _ = exported
    umoci = tool("umoci")
    assert check(umoci, "ls", "--layout", str(tmp / "oci")).stdout.split() == ["1"]
    bundle = tmp_path / "bundle"
    args = [umoci, "unpack", "--image", f"{tmp}/oci:1", str(bundle)]
    import os

    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    check(*args)
    assert (bundle / "rootfs" / "a" / "file").read_text() == CONTENT
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()


def _podman_run(podman: str, image_id: str) -> str:
    # runc and small rlimits: this VM's hybrid cgroups defeat crun, and podman's default rlimits
    # exceed its hard limits; neither says anything about the image
    r = subprocess.run([podman, "run", "--rm", "--pull", "never", "--network", "none", "--runtime", "runc",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image_id, "cat", "/a/file"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and any(s in r.stderr for s in ("cgroup", "OCI runtime", "newuidmap", "mount")):
        pytest.skip(f"podman cannot run containers on this machine: {r.stderr.strip()[:300]}")
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("archive_name", ["docker.tar", "oci.tar"])
def test_podman_loads_and_runs(exported, archive_name):
    tmp, name, image = exported
    podman = tool("podman")
    out = check(podman, "load", "-i", str(tmp / archive_name)).stdout
    assert "Loaded image" in out, out
    try:
        ids = check(podman, "image", "inspect", "--format", "{{.Id}}", name).stdout.split()
        assert ids == [image.id.partition(":")[2]]  # podman's image ID is our config digest
        assert _podman_run(podman, name) == CONTENT
    finally:
        subprocess.run([podman, "rmi", "-f", name], capture_output=True)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_buildpy_loads_what_podman_saves(exported, tmp_path, fmt):
    tmp, name, image = exported
    podman = tool("podman")
    check(podman, "load", "-i", str(tmp / "docker.tar"))
    try:
        check(podman, "save", "--format", fmt, "-o", str(tmp_path / "saved.tar"), name)
    finally:
        subprocess.run([podman, "rmi", "-f", name], capture_output=True)
    store = Store(tmp_path / "store")
    with store.lease():
        loaded = archive.load(store, tmp_path / "saved.tar")
    assert len(loaded) == 1
    _, back = loaded[0]
    assert back.diff_ids == image.diff_ids
    if fmt == "docker-archive":
        assert back.id == image.id  # the config travels verbatim


def test_buildpy_loads_what_skopeo_writes(exported, tmp_path):
    tmp, name, image = exported
    skopeo = tool("skopeo")
    check(skopeo, "copy", f"oci-archive:{tmp}/oci.tar", f"oci:{tmp_path}/layout:copied")
    store = Store(tmp_path / "store")
    with store.lease():
        loaded = archive.load(store, tmp_path / "layout")
    (ref, back), = loaded
    assert ref is None  # a bare tag names no repository: loaded untagged, like `docker load` of it
    assert [d.digest for d in back.layers] == [d.digest for d in image.layers]
    assert back.id == image.id
