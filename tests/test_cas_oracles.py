"""Real tools judge our exports: skopeo, umoci and podman (Debian packages, installed by
scripts/deps) must read what `buildpy export` writes, and buildpy must load what they write.

podman runs on a store of its own under the test's tmp dir (--root/--runroot, vfs), so other
test runs on the machine, which make the same deterministic busybox layers, cannot remove a
layer under our feet, and the machine's images are left alone."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid

import pytest

from buildpy.cas import archive
from buildpy.cas.compress import decompress_reader
from buildpy.cas.image import Image
from buildpy.cas.media import layer_compression
from buildpy.cas.store import Store
from tests.imagekit import busybox_image

VIA_DOCKER = "loaded by podman from a docker archive\n"
VIA_OCI = "loaded by podman from an OCI archive\n"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/deps installs it as root)")
    return path


def check(*cmd: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two busybox images with different /a/file, one exported as OCI (dir and tar), the
    other as a docker archive, so podman unpacks each format's layers itself."""
    tmp = tmp_path_factory.mktemp("oracle")
    store = Store(tmp / "store")
    unique = uuid.uuid4().hex[:8]
    images = {}
    for kind, content in (("docker", VIA_DOCKER), ("oci", VIA_OCI)):
        name = f"localhost/buildpy-oracle-{kind}-{unique}:1"
        images[kind] = (name, busybox_image(store, name, extra={"a/file": content}))
    archive.export_oci(store, [images["oci"][0]], tmp / "oci")
    archive.export_oci(store, [images["oci"][0]], tmp / "oci.tar")
    archive.export_docker(store, [images["docker"][0]], tmp / "docker.tar")
    return tmp, images


def test_skopeo_inspects_and_copies(exported):
    tmp, images = exported
    skopeo = tool("skopeo")
    for transport, kind in ((f"oci-archive:{tmp}/oci.tar", "oci"), (f"oci:{tmp}/oci:1", "oci"),
                            (f"docker-archive:{tmp}/docker.tar", "docker")):
        image = images[kind][1]
        info = json.loads(check(skopeo, "inspect", transport).stdout)
        # containers/image describes a docker archive's layers by diffID (it serves them uncompressed)
        want = image.diff_ids if kind == "docker" else [d.digest for d in image.layers]
        assert info["Layers"] == want, transport
        assert info["Os"] == "linux" and info["Architecture"] == image.config["architecture"]
        raw = json.loads(check(skopeo, "inspect", "--raw", transport).stdout)
        assert raw["config"]["digest"] == image.id, transport
    check(skopeo, "copy", f"oci-archive:{tmp}/oci.tar", f"dir:{tmp}/copied")
    image = images["oci"][1]
    assert (tmp / "copied" / "manifest.json").is_file()
    assert (tmp / "copied" / image.layers[0].digest.partition(":")[2]).is_file()


def test_umoci_lists_and_unpacks_the_layout(exported, tmp_path):
    tmp, _ = exported
    umoci = tool("umoci")
    assert check(umoci, "ls", "--layout", str(tmp / "oci")).stdout.split() == ["1"]
    bundle = tmp_path / "bundle"
    args = [umoci, "unpack", "--image", f"{tmp}/oci:1", str(bundle)]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    check(*args)
    assert (bundle / "rootfs" / "a" / "file").read_text() == VIA_OCI
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()


@pytest.fixture(scope="module")
def podman(exported, tmp_path_factory):
    """podman on a private store, with both archives loaded into it."""
    tmp, images = exported
    exe = tool("podman")
    state = tmp_path_factory.mktemp("podman")
    base = [exe, "--root", str(state / "root"), "--runroot", str(state / "run"), "--storage-driver", "vfs"]
    try:
        for kind in ("docker", "oci"):
            out = check(*base, "load", "-i", str(tmp / f"{kind}.tar")).stdout
            assert f"Loaded image: {images[kind][0]}" in out, out
        yield base
    finally:
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def _podman_run(base: list[str], name: str) -> str:
    # runc and small rlimits: this VM's hybrid cgroups defeat crun, and podman's default rlimits
    # exceed its hard limits; neither says anything about the image
    r = subprocess.run([*base, "run", "--rm", "--pull", "never", "--network", "none", "--runtime", "runc",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", name, "cat", "/a/file"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and any(s in r.stderr for s in ("cgroup", "OCI runtime", "newuidmap", "mount")):
        pytest.skip(f"podman cannot run containers on this machine: {r.stderr.strip()[:300]}")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_podman_loads_both_archives_and_runs_them(exported, podman):
    _, images = exported
    names = [images["docker"][0], images["oci"][0]]
    ids = check(*podman, "image", "inspect", "--format", "{{.Id}}", *names).stdout.split()
    # podman's image ID is the config digest: our config went through unchanged
    assert ids == [images["docker"][1].id.partition(":")[2], images["oci"][1].id.partition(":")[2]]
    assert _podman_run(podman, images["docker"][0]) == VIA_DOCKER
    assert _podman_run(podman, images["oci"][0]) == VIA_OCI


def test_buildpy_loads_what_podman_saves(exported, podman, tmp_path):
    _, images = exported
    for kind, fmt in (("docker", "docker-archive"), ("oci", "oci-archive")):
        name, image = images[kind]
        saved = tmp_path / f"{fmt}.tar"
        check(*podman, "save", "--format", fmt, "-o", str(saved), name)
        store = Store(tmp_path / f"store-{fmt}")
        (ref, back), = archive.load(store, saved)
        assert ref == name, fmt  # podman names it in RepoTags / a whole ref.name
        # podman recompresses (gzip for oci-archive, none for docker-archive): the same content
        assert back.diff_ids == image.diff_ids, fmt
        if fmt == "docker-archive":
            assert [d.digest for d in back.layers] == image.diff_ids
            assert back.id == image.id  # the config travels verbatim
        _assert_fs_has_file(store, back, "a/file", {"docker": VIA_DOCKER, "oci": VIA_OCI}[kind])


def _assert_fs_has_file(store: Store, image: Image, path: str, content: str) -> None:
    layer = image.layers[-1]
    with store.open_blob(layer.digest) as f:
        data = decompress_reader(f, layer_compression(layer.media_type)).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert t.extractfile(path).read().decode() == content


def test_buildpy_loads_what_skopeo_writes(exported, tmp_path):
    tmp, images = exported
    name, image = images["oci"]
    skopeo = tool("skopeo")
    check(skopeo, "copy", f"oci-archive:{tmp}/oci.tar", f"oci:{tmp_path}/layout:copied")
    store = Store(tmp_path / "store")
    (ref, back), = archive.load(store, tmp_path / "layout")
    assert ref is None  # a bare tag names no repository: loaded untagged, as `docker load` leaves it
    assert [d.digest for d in back.layers] == [d.digest for d in image.layers]
    assert back.id == image.id
    # and skopeo's docker-archive writer, which names layers by their digest
    check(skopeo, "copy", f"oci:{tmp_path}/layout:copied", f"docker-archive:{tmp_path}/d.tar:{name}")
    (ref, back), = archive.load(Store(tmp_path / "store2"), tmp_path / "d.tar")
    assert ref == name and back.diff_ids == image.diff_ids
