"""The store commands as users and scripts meet them (CLI.md): images, tag, rmi, inspect, prune,
fsck, load, export; their output, exit codes and one-line errors; 8 load+tag processes at once."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from buildpy.cas.image import Image
from buildpy.cli import main
from buildpy.cas.store import Store
from tests.imagekit import files_tar, image_from_tars

_SCRIPT = Path(sys.executable).with_name("buildpy")
BUILDPY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "buildpy"]


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`buildpy --root ROOT ARGS…` run in this process (fast); the tests of processes at once and
    of the environment start real ones."""
    argv = ["--root", str(root), *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def ok(root: Path, *args: str) -> str:
    r = run(root, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(root: Path, *args: str) -> str:
    """Runs a command that must fail as a user's mistake: exit 1, one `error:` line, no traceback."""
    r = run(root, *args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


# archives made by hand, so that testing load does not depend on export


def oci_layout(path: Path, name: str, files: dict[str, str | bytes], compression: str = "gzip") -> Image:
    """An OCI image layout at `path` holding one image, index.json naming it `name` (full ref)."""
    store = Store(path)
    image = image_from_tars(store, [files_tar(files)], name, compression=compression)
    for extra in ("tmp", "locks", "diffids"):
        shutil.rmtree(path / extra, ignore_errors=True)
    return image


def docker_tar(path: Path, repo_tag: str, files: dict[str, str | bytes], work: Path) -> Image:
    """A `docker save` archive (manifest.json with RepoTags, blobs/sha256/…, uncompressed layers)."""
    store = Store(work)
    image = image_from_tars(store, [files_tar(files)], compression="")
    with tarfile.open(path, "w") as t:
        blobs = [image.id, *(d.digest for d in image.layers)]
        for digest in blobs:
            t.add(store.blob_path(digest), f"blobs/sha256/{digest.partition(':')[2]}")
        manifest = [{"Config": f"blobs/sha256/{image.id.partition(':')[2]}", "RepoTags": [repo_tag],
                     "Layers": [f"blobs/sha256/{d.digest.partition(':')[2]}" for d in image.layers]}]
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return image


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def two(root):
    store = Store(root)
    a = image_from_tars(store, [files_tar({"a/file": "A"})], "docker.io/library/alpha:latest")
    b = image_from_tars(store, [files_tar({"b/file": "B"})], "localhost:5000/team/beta:v2",
                        config={"Env": ["X=1"]})
    return a, b


# images


def test_images_table(root, two):
    a, b = two
    lines = ok(root, "images").splitlines()
    assert lines[0] == "REPOSITORY                 TAG       IMAGE ID       CREATED       SIZE"
    rows = sorted(re.split(r"\s{3,}", line) for line in lines[1:])
    assert rows == [
        ["alpha", "latest", a.id[7:19], rows[0][3], rows[0][4]],
        ["localhost:5000/team/beta", "v2", b.id[7:19], rows[1][3], rows[1][4]],
    ]
    assert re.fullmatch(r"\d+ (years|months) ago", rows[0][3])  # created 2024-01-01
    assert re.fullmatch(r"\d+(\.\d+)?(B|kB)", rows[0][4])
    assert sorted(ok(root, "images", "-q").split()) == sorted([a.id[7:19], b.id[7:19]])


def test_images_of_an_empty_store(root):
    assert ok(root, "images") == "REPOSITORY   TAG       IMAGE ID   CREATED   SIZE\n"


def test_root_from_environment(root, two):
    env = dict(os.environ, BUILDPY_ROOT=str(root))
    r = subprocess.run([*BUILDPY, "images", "-q"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and len(r.stdout.split()) == 2
    r = subprocess.run([*BUILDPY, "rmi", "nothere"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.startswith("error: no image nothere in the store ")
    assert "Traceback" not in r.stderr


# tag, rmi


def test_tag_and_rmi(root, two):
    a, _ = two
    ok(root, "tag", "alpha", "me/copy:1")
    ok(root, "tag", a.id[7:19], "localhost/other")  # by short image ID
    refs = Store(root).refs()
    assert refs["docker.io/me/copy:1"].digest == a.digest == refs["localhost/other:latest"].digest
    blobs_before = set(Store(root).iter_blobs())
    assert ok(root, "rmi", "me/copy:1", "localhost/other") == "Untagged: me/copy:1\nUntagged: localhost/other:latest\n"
    assert "docker.io/me/copy:1" not in Store(root).refs()
    assert set(Store(root).iter_blobs()) == blobs_before  # rmi only untags; prune frees


def test_tag_errors(root, two):
    assert "no image nothere" in fails(root, "tag", "nothere", "x")
    assert "buildpy pull" in fails(root, "tag", "nothere", "x")
    assert "digest reference" in fails(root, "tag", "alpha", "x@sha256:" + "a" * 64)
    assert "must be lowercase" in fails(root, "tag", "alpha", "Upper")


def test_rmi_goes_on_after_a_missing_name(root, two):
    r = run(root, "rmi", "nothere", "alpha")
    assert r.returncode == 1
    assert r.stdout == "Untagged: alpha:latest\n"
    assert r.stderr.startswith("error: no image nothere") and "Traceback" not in r.stderr


def test_rmi_by_id_needs_force_when_tagged_twice(root, two):
    a, _ = two
    ok(root, "tag", "alpha", "alpha:two")
    assert "must be forced" in fails(root, "rmi", a.id[7:19])
    out = ok(root, "rmi", "-f", a.id[7:19])
    assert out == "Untagged: alpha:latest\nUntagged: alpha:two\n"


# inspect


def test_inspect_shape(root, two):
    _, b = two
    out = json.loads(ok(root, "inspect", "localhost:5000/team/beta:v2"))
    assert set(out) == {"name", "id", "digest", "mediaType", "refs", "size", "manifest", "config"}
    assert out["name"] == "localhost:5000/team/beta:v2"
    assert (out["id"], out["digest"]) == (b.id, b.digest)
    assert out["manifest"] == b.manifest and out["config"]["config"]["Env"] == ["X=1"]
    assert out["refs"] == ["localhost:5000/team/beta:v2"]
    by_id = json.loads(ok(root, "inspect", b.id))
    assert by_id["digest"] == b.digest


def test_inspect_errors(root, two):
    assert "no image beta" in fails(root, "inspect", "beta")
    assert "invalid reference format" in fails(root, "inspect", "a//b")


# prune, fsck


def test_prune_reports_bytes_freed(root, two):
    a, _ = two
    size = sum(d.size for d in a.layers) + a.config_descriptor.size + a.manifest_descriptor.size
    assert ok(root, "prune") == "Deleted blobs: 0\nTotal reclaimed space: 0B\n"
    ok(root, "rmi", "alpha")
    out = ok(root, "prune")
    assert out.splitlines() == ["Deleted blobs: 3", f"Total reclaimed space: {size}B"]
    assert ok(root, "fsck").endswith("is consistent\n")


def test_prune_accepts_cache_mounts(root):
    assert ok(root, "prune", "--cache-mounts").startswith("Deleted blobs: 0")


def test_fsck_exit_codes(root, two):
    a, _ = two
    assert ok(root, "fsck") == f"store {root} is consistent\n"
    path = Store(root).blob_path(a.layers[0].digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[20] ^= 1  # same size, other content
    path.write_bytes(bytes(data))
    r = run(root, "fsck")
    assert r.returncode == 1
    actual = hashlib.sha256(data).hexdigest()
    assert r.stdout == f"error: blob {a.layers[0].digest}: content hashes to sha256:{actual}\n"
    assert r.stderr == f"error: store {root} has 1 problem(s)\n"


def test_unusable_root_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    assert "cannot use store" in fails(tmp_path / "f" / "x", "images")


# load, export (archive.py)


def test_load_oci_layout_and_docker_tar(root, tmp_path):
    layout_image = oci_layout(tmp_path / "layout", "docker.io/library/fromoci:1", {"f": "oci"})
    out = ok(root, "load", str(tmp_path / "layout"))
    assert out == "Loaded image: fromoci:1\n"
    docker_image = docker_tar(tmp_path / "save.tar", "fromdocker:2", {"f": "docker"}, tmp_path / "work")
    assert ok(root, "load", str(tmp_path / "save.tar")) == "Loaded image: fromdocker:2\n"
    store = Store(root)
    assert store.get_ref("docker.io/library/fromoci:1").digest == layout_image.digest
    loaded = json.loads(ok(root, "inspect", "fromdocker:2"))
    assert loaded["id"] == docker_image.id
    assert ok(root, "fsck").endswith("is consistent\n")


def test_load_missing_path(root, tmp_path):
    assert "cannot load" in fails(root, "load", str(tmp_path / "nope"))


@pytest.mark.parametrize("fmt,name", [("--oci", "out"), ("--oci", "out.tar"), ("--docker", "out.tar")])
def test_export_round_trip(root, two, tmp_path, fmt, name):
    a, _ = two
    dest = tmp_path / name
    ok(root, "export", fmt, "-o", str(dest), "alpha")
    assert dest.exists()
    other = tmp_path / "other"
    assert ok(other, "load", str(dest)) == "Loaded image: alpha:latest\n"
    back = json.loads(ok(other, "inspect", "alpha"))
    assert back["id"] == a.id
    assert back["config"]["rootfs"]["diff_ids"] == a.diff_ids


def test_export_errors(root, two, tmp_path):
    assert "no image nothere" in fails(root, "export", "--oci", "-o", str(tmp_path / "x"), "nothere")
    r = run(root, "export", "-o", str(tmp_path / "x"), "alpha")  # neither --oci nor --docker
    assert r.returncode == 2


# many processes on one store


def test_parallel_load_and_tag(root, tmp_path):
    """8 processes each load an archive (sharing a base layer) and tag it, at once: all succeed,
    every ref is in index.json, and the store checks clean."""
    for i in range(8):
        oci_layout(tmp_path / f"l{i}", f"docker.io/library/app{i}:1", {"base": "shared " * 1000, "own": str(i)})
    cmd = " ".join(BUILDPY) + f" --root {root}"
    procs = [
        subprocess.Popen(["sh", "-c", f"{cmd} load {tmp_path}/l{i} && {cmd} tag app{i}:1 copy{i}:1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    results = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, results
    names = set(Store(root).refs())
    assert names == {f"docker.io/library/{n}{i}:1" for i in range(8) for n in ("app", "copy")}
    assert ok(root, "fsck").endswith("is consistent\n")
