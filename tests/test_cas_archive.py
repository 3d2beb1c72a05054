"""Archives in and out: round trips, determinism, and hostile archives refused with the store intact."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from buildpy.cas import archive
from buildpy.cas.gc import fsck
from buildpy.cas.store import Store, StoreError
from tests.imagekit import files_tar, image_from_tars

NAME = "docker.io/library/sample:1"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def layout(tmp_path, store) -> Path:
    image_from_tars(store, [files_tar({"a/file": "hello"}), files_tar({"b": "2"})], NAME)
    out = tmp_path / "layout"
    with store.lease():
        archive.export_oci(store, [NAME], out)
    return out


def load(store: Store, path: Path):
    with store.lease():
        return archive.load(store, path)


def assert_intact(store: Store, refs_before: dict) -> None:
    assert store.refs() == refs_before
    assert [p for p in fsck(store) if p.level == "error"] == []


def test_export_is_deterministic(tmp_path, store, layout):
    with store.lease():
        archive.export_oci(store, [NAME], tmp_path / "a.tar")
        archive.export_oci(store, [NAME], tmp_path / "b.tar")
        archive.export_docker(store, [NAME], tmp_path / "a.docker.tar")
        archive.export_docker(store, [NAME], tmp_path / "b.docker.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.tar").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert (tmp_path / "a.docker.tar").read_bytes() == (tmp_path / "b.docker.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as t:
        assert {m.mtime for m in t.getmembers()} == {0}
        assert "index.json" in t.getnames() and "oci-layout" in t.getnames()


def test_round_trip_keeps_digests(tmp_path, store, layout):
    original = store.get_ref(NAME)
    for path in (layout, tmp_path / "x.tar"):
        if path.suffix == ".tar":
            with store.lease():
                archive.export_docker(store, [NAME], path)
        other = Store(tmp_path / f"other-{path.name}")
        (name, image), = load(other, path)
        assert name == NAME
        first = load(store, layout)[0][1]
        assert [d.digest for d in image.layers] == [d.digest for d in first.layers]
        assert image.id == first.id
    assert store.get_ref(NAME) == original


def test_zstd_layers_leave_docker_archives_uncompressed(tmp_path, store):
    image = image_from_tars(store, [files_tar({"z": "zstd"})], NAME, compression="zstd")
    with store.lease():
        archive.export_docker(store, [NAME], tmp_path / "d.tar")
    with tarfile.open(tmp_path / "d.tar") as t:
        manifest = json.load(t.extractfile("manifest.json"))
        layer = t.extractfile(manifest[0]["Layers"][0]).read()
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == image.diff_ids[0]
    (_, back), = load(Store(tmp_path / "o"), tmp_path / "d.tar")
    assert back.diff_ids == image.diff_ids and back.id == image.id


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as t:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                t.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
    return path


def _layout_tar(layout: Path, out: Path, replace: dict[str, bytes] | None = None,
                extra: list[tarfile.TarInfo | tuple[str, bytes]] = ()) -> Path:
    members: list = []
    for path in sorted(layout.rglob("*")):
        if path.is_file():
            name = str(path.relative_to(layout))
            members.append((name, (replace or {}).get(name, path.read_bytes())))
    return _tar(out, members + list(extra))


def test_traversal_member_names_are_refused(tmp_path, store, layout):
    before = store.refs()
    bad = _layout_tar(layout, tmp_path / "bad.tar", extra=[("../escape", b"x")])
    with pytest.raises(StoreError, match="outside the archive"):
        load(store, bad)
    assert not (tmp_path / "escape").exists()
    assert_intact(store, before)


def test_symlink_member_pointing_outside_is_refused(tmp_path, store, layout):
    index = json.loads((layout / "index.json").read_text())
    manifest = index["manifests"][0]["digest"][7:]
    link = tarfile.TarInfo(f"blobs/sha256/{manifest}")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../../../etc/passwd"
    members = [(str(p.relative_to(layout)), p.read_bytes()) for p in sorted(layout.rglob("*"))
               if p.is_file() and p.name != manifest]
    bad = _tar(tmp_path / "bad.tar", [*members, link])
    with pytest.raises(StoreError, match="links outside"):
        load(Store(tmp_path / "fresh"), bad)


def test_tampered_blob_stores_nothing(tmp_path, store, layout):
    fresh = Store(tmp_path / "fresh")
    blobs = sorted((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim = blobs[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = _layout_tar(layout, tmp_path / "bad.tar", replace={f"blobs/sha256/{victim.name}": bytes(data)})
    with pytest.raises(StoreError, match="does not match its digest"):
        load(fresh, bad)
    assert not fresh.has_blob(f"sha256:{victim.name}")
    assert fresh.refs() == {}


def test_missing_blob_and_symlinked_dir_entries(tmp_path, store, layout):
    victim = sorted((layout / "blobs/sha256").iterdir())[0]
    victim_data = victim.read_bytes()
    victim.unlink()
    with pytest.raises(StoreError, match="missing"):
        load(Store(tmp_path / "a"), layout)
    victim.symlink_to("/etc/passwd")
    with pytest.raises(StoreError, match="symlink"):
        load(Store(tmp_path / "b"), layout)
    victim.unlink()
    victim.write_bytes(victim_data)
    assert load(Store(tmp_path / "c"), layout)[0][0] == NAME


def test_garbage_inputs(tmp_path, store):
    before = store.refs()
    cases = {
        "not-a-tar": b"hello, this is not a tar archive at all" * 20,
        "empty-tar": _tar(tmp_path / "e.tar", []).read_bytes(),
        "bad-index": _tar(tmp_path / "i.tar", [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                                               ("index.json", b"{nope")]).read_bytes(),
        "bad-manifest": _tar(tmp_path / "m.tar", [("manifest.json", b'[{"Config": 5}]')]).read_bytes(),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        with pytest.raises(StoreError) as e:
            load(store, path)
        assert "\n" not in str(e.value), name
    assert_intact(store, before)


def test_export_refuses_a_non_empty_dir_and_keeps_no_temp(tmp_path, store, layout):
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep").write_text("mine")
    with store.lease(), pytest.raises(StoreError, match="not an empty directory"):
        archive.export_oci(store, [NAME], target)
    assert (target / "keep").read_text() == "mine"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
