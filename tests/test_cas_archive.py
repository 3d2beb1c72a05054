"""Archives in and out: round trips, determinism, every docker-save form, and hostile archives
refused with one clear line and the store intact (refs unchanged, fsck clean, no bad blob)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from buildpy.cas import archive
from buildpy.cas.gc import fsck
from buildpy.cas.layers import blobs_for_diff_id
from buildpy.cas.media import OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor
from buildpy.cas.store import Store, StoreError, canonical_json
from tests.imagekit import files_tar, image_from_tars

NAME = "docker.io/library/sample:1"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def layout(tmp_path, store) -> Path:
    image_from_tars(store, [files_tar({"a/file": "hello"}), files_tar({"b": "2"})], NAME)
    out = tmp_path / "layout"
    archive.export_oci(store, [NAME], out)
    return out


def refuse(store: Store, path: Path, match: str) -> str:
    """Loading `path` fails with one line matching `match`, and leaves the store as it was."""
    before = store.refs()
    with pytest.raises(StoreError, match=match) as e:
        archive.load(store, path)
    assert getattr(e.value, "user_facing", False)
    assert "\n" not in str(e.value)
    assert_intact(store, before)
    return str(e.value)


def assert_intact(store: Store, refs_before: dict) -> None:
    assert store.refs() == refs_before
    assert [p for p in fsck(store) if p.level == "error"] == []
    assert not [p for p in store.tmp_dir.iterdir()], "a temp file was left in tmp/"


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


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _layout_members(layout: Path, replace: dict[str, bytes] | None = None, drop: str = "") -> list:
    return [(str(p.relative_to(layout)), (replace or {}).get(str(p.relative_to(layout)), p.read_bytes()))
            for p in sorted(layout.rglob("*")) if p.is_file() and p.name != drop]


def _layout_tar(layout: Path, out: Path, replace: dict[str, bytes] | None = None, extra: list = ()) -> Path:
    return _tar(out, _layout_members(layout, replace) + list(extra))


def _index(layout: Path) -> dict:
    return json.loads((layout / "index.json").read_text())


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest.partition(":")[2]


def _manifest(layout: Path) -> dict:
    return json.loads(_blob(layout, _index(layout)["manifests"][0]["digest"]).read_text())


# round trips and what is written


def test_export_is_deterministic_and_shaped_as_the_tools_expect(tmp_path, store, layout):
    for name in ("a.tar", "b.tar", "a.docker.tar", "b.docker.tar"):
        export = archive.export_docker if "docker" in name else archive.export_oci
        export(store, [NAME], tmp_path / name)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert (tmp_path / "a.docker.tar").read_bytes() == (tmp_path / "b.docker.tar").read_bytes()
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.tar").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with tarfile.open(tmp_path / "a.tar") as t:
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in t.getmembers()} == {(0, 0, 0, "")}
        index = json.load(t.extractfile("index.json"))
        assert "oci-layout" in t.getnames()
    assert index["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "1", "io.containerd.image.name": NAME}
    with tarfile.open(tmp_path / "a.docker.tar") as t:
        manifest = json.load(t.extractfile("manifest.json"))
        repositories = json.load(t.extractfile("repositories"))
        names = t.getnames()
    (entry,) = manifest
    assert entry["RepoTags"] == ["sample:1"]
    assert entry["Config"] in names and all(layer in names for layer in entry["Layers"])
    assert repositories == {"sample": {"1": entry["Layers"][-1].rpartition("/")[2]}}


def test_round_trips_keep_layers_and_config(tmp_path, store, layout):
    original = store.get_ref(NAME)
    first = archive.load(store, layout)[0][1]
    archive.export_docker(store, [NAME], tmp_path / "d.tar")
    archive.export_oci(store, [NAME], tmp_path / "o.tar")
    for path in (layout, tmp_path / "d.tar", tmp_path / "o.tar"):
        other = Store(tmp_path / f"other-{path.name}")
        (name, image), = archive.load(other, path)
        assert name == NAME
        assert [d.digest for d in image.layers] == [d.digest for d in first.layers]
        assert image.id == first.id and image.diff_ids == first.diff_ids
        assert other.refs()[NAME].digest == image.digest
        # exported again from the new store: the same files
        again = tmp_path / f"again-{path.name}.tar"
        archive.export_oci(other, [NAME], again)
        if path.name == "o.tar":
            assert again.read_bytes() == path.read_bytes()
    assert store.get_ref(NAME) == original


def test_zstd_layers_go_into_docker_archives_uncompressed(tmp_path, store):
    image = image_from_tars(store, [files_tar({"z": "zstd"})], NAME, compression="zstd")
    archive.export_docker(store, [NAME], tmp_path / "d.tar")
    with tarfile.open(tmp_path / "d.tar") as t:
        manifest = json.load(t.extractfile("manifest.json"))
        layer = t.extractfile(manifest[0]["Layers"][0]).read()
    assert sha(layer) == image.diff_ids[0]
    (_, back), = archive.load(Store(tmp_path / "o"), tmp_path / "d.tar")
    assert back.diff_ids == image.diff_ids and back.id == image.id
    assert back.layers[0].media_type == OCI_LAYER


def _old_docker_archive(tmp_path: Path, compress_layer: bool = True) -> tuple[Path, bytes, bytes]:
    """What docker < 25 saves: HEX.json configs, <id>/layer.tar, a shared layer as a symlink."""
    layer = files_tar({"etc/hello": "world"})
    blob = gzip.compress(layer, mtime=0) if compress_layer else layer
    config = canonical_json({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}})
    config2 = canonical_json({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["x"]},
                              "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}})
    hex1, hex2 = sha(config)[7:], sha(config2)[7:]
    manifest = [{"Config": f"{hex1}.json", "RepoTags": ["old:1", "old:2"], "Layers": ["aaaa/layer.tar"]},
                {"Config": f"{hex2}.json", "RepoTags": None, "Layers": ["bbbb/layer.tar"]}]
    path = _tar(tmp_path / "old.tar", [
        ("aaaa/VERSION", b"1.0"), ("aaaa/layer.tar", blob), _symlink("bbbb/layer.tar", "../aaaa/layer.tar"),
        (f"{hex1}.json", config), (f"{hex2}.json", config2),
        ("manifest.json", json.dumps(manifest).encode()), ("repositories", b'{"old":{"1":"aaaa"}}'),
    ])
    return path, blob, config


def test_old_docker_archives_with_shared_gzip_layers_load(tmp_path, store):
    path, blob, config = _old_docker_archive(tmp_path)
    loaded = archive.load(store, path)
    assert [name for name, _ in loaded] == ["docker.io/library/old:1", "docker.io/library/old:2", None]
    image = loaded[0][1]
    assert image.id == sha(config)  # the config is kept byte for byte: the image ID stays docker's
    assert store.read_blob(image.id) == config
    assert image.layers[0].digest == sha(blob) and image.layers[0].media_type == OCI_LAYER_GZIP
    assert loaded[2][1].layers == image.layers
    assert [d.digest for d in blobs_for_diff_id(store, image.diff_ids[0])] == [sha(blob)]


def test_compressed_archives_load(tmp_path, store, layout):
    plain = _layout_tar(layout, tmp_path / "l.tar")
    squeezed = tmp_path / "l.tar.gz"
    squeezed.write_bytes(gzip.compress(plain.read_bytes()))
    (name, _), = archive.load(store, squeezed)
    assert name == NAME
    assert not list(store.tmp_dir.iterdir())
    # a pipe (`buildpy load /dev/stdin`) cannot seek: it is spooled first
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=fifo.write_bytes, args=(squeezed.read_bytes(),))
    feeder.start()
    try:
        (name, _), = archive.load(Store(tmp_path / "from-pipe"), fifo)
    finally:
        if feeder.is_alive():  # load gave up before reading: unblock the writer, never hang
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        feeder.join()
    assert name == NAME


def test_untagged_oci_entries_and_artifacts_in_an_index(tmp_path, store, layout):
    """A ref.name that is only a tag loads untagged; an index's attestation manifest is kept
    (verified, not judged) so the index exports whole."""
    manifest_entry = _index(layout)["manifests"][0]
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    empty = b"{}"
    attestation = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": sha(statement), "size": len(statement)}],
    })
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {k: manifest_entry[k] for k in ("mediaType", "digest", "size")} | {
            "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": sha(attestation), "size": len(attestation),
         "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
    ]})
    top = {"schemaVersion": 2, "manifests": [{"mediaType": OCI_INDEX,
                                              "digest": sha(index), "size": len(index),
                                              "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    blobs = [(f"blobs/sha256/{sha(b)[7:]}", b) for b in (statement, empty, attestation, index)]
    members = [m for m in _layout_members(layout) if m[0] != "index.json"]
    path = _tar(tmp_path / "multi.tar", members + blobs + [("index.json", json.dumps(top).encode())])
    (name, image), = archive.load(store, path)
    assert name is None
    assert image.digest == manifest_entry["digest"]
    assert all(store.has_blob(sha(b)) for _, b in blobs)
    store.set_ref("docker.io/library/multi:1", Descriptor(
        OCI_INDEX, sha(index), len(index)))
    archive.export_oci(store, ["docker.io/library/multi:1"], tmp_path / "out")
    assert all((tmp_path / "out" / n).is_file() for n, _ in blobs)


def test_export_refuses_a_non_empty_dir_and_unknown_names_and_keeps_no_temp(tmp_path, store, layout):
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep").write_text("mine")
    with pytest.raises(StoreError, match="not an empty directory"):
        archive.export_oci(store, [NAME], target)
    assert (target / "keep").read_text() == "mine"
    with pytest.raises(StoreError, match="no image docker.io/library/nope:1"):
        archive.export_docker(store, ["docker.io/library/nope:1"], tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# hostile archives


def test_traversal_member_names_are_refused(tmp_path, store, layout):
    bad = _layout_tar(layout, tmp_path / "bad.tar", extra=[("../escape", b"x")])
    refuse(store, bad, "outside the archive")
    assert not (tmp_path / "escape").exists()
    absolute = _layout_tar(layout, tmp_path / "abs.tar", extra=[("/tmp/escape", b"x")])
    refuse(store, absolute, "outside the archive")


def test_traversal_names_in_a_docker_manifest_are_refused(tmp_path, store):
    path, _, _ = _old_docker_archive(tmp_path, compress_layer=False)
    with tarfile.open(path) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
    good = json.loads(dict(members)["manifest.json"])[0]
    for field, value in (("Layers", ["../../../../etc/passwd"]), ("Config", "/etc/passwd"),
                         ("Config", "aaaa/../../x.json")):
        manifest = [good | {field: value}]
        bad = _tar(tmp_path / "bad.tar", [m for m in members if m[0] != "manifest.json"]
                   + [("manifest.json", json.dumps(manifest).encode())])
        refuse(store, bad, "points outside the archive")


def test_symlink_member_pointing_outside_is_refused(tmp_path, store, layout):
    manifest = _index(layout)["manifests"][0]["digest"][7:]
    bad = _tar(tmp_path / "bad.tar", _layout_members(layout, drop=manifest)
               + [_symlink(f"blobs/sha256/{manifest}", "../../../../etc/passwd")])
    refuse(store, bad, "links outside")
    absolute = _tar(tmp_path / "abs.tar", _layout_members(layout, drop=manifest)
                    + [_symlink(f"blobs/sha256/{manifest}", "/etc/passwd")])
    refuse(store, absolute, "links outside")


def test_index_pointing_outside_is_refused(tmp_path, store, layout):
    index = _index(layout)
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    bad = _layout_tar(layout, tmp_path / "bad.tar", replace={"index.json": json.dumps(index).encode()})
    refuse(store, bad, "invalid digest")


def test_tampered_blob_stores_nothing(tmp_path, store, layout):
    victim = max((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = _layout_tar(layout, tmp_path / "bad.tar", replace={f"blobs/sha256/{victim.name}": bytes(data)})
    fresh = Store(tmp_path / "fresh")
    refuse(fresh, bad, "does not match its digest")
    assert not fresh.has_blob(f"sha256:{victim.name}")


def test_blob_larger_than_announced_is_refused(tmp_path, store, layout):
    manifest = _manifest(layout)
    layer = manifest["layers"][0]
    index = _index(layout)
    manifest["layers"][0] = layer | {"size": layer["size"] - 1}
    data = canonical_json(manifest)
    index["manifests"][0] |= {"digest": sha(data), "size": len(data)}
    bad = _layout_tar(layout, tmp_path / "bad.tar", replace={"index.json": json.dumps(index).encode()},
                      extra=[(f"blobs/sha256/{sha(data)[7:]}", data)])
    refuse(Store(tmp_path / "fresh"), bad, "its descriptor says")
    refuse(store, bad, "its descriptor says")  # a store that already has the blob checks the size too


def test_missing_blobs_fifos_and_symlinks_in_a_directory(tmp_path, layout):
    victim = sorted((layout / "blobs/sha256").iterdir())[0]
    victim_data = victim.read_bytes()
    victim.unlink()
    refuse(Store(tmp_path / "a"), layout, "missing")
    victim.symlink_to("/etc/passwd")
    refuse(Store(tmp_path / "b"), layout, "symlink")
    victim.unlink()
    os.mkfifo(victim)  # opening a FIFO would wait for a writer forever
    refuse(Store(tmp_path / "c"), layout, "not a regular file")
    victim.unlink()
    victim.write_bytes(victim_data)
    assert archive.load(Store(tmp_path / "d"), layout)[0][0] == NAME


def test_a_wrong_diff_id_is_refused_and_not_indexed(tmp_path, store):
    path, blob, _ = _old_docker_archive(tmp_path)
    lie = sha(b"some other content")
    config = canonical_json({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [lie]}})
    manifest = [{"Config": f"{sha(config)[7:]}.json", "RepoTags": ["lie:1"], "Layers": ["aaaa/layer.tar"]}]
    bad = _tar(tmp_path / "bad.tar", [("aaaa/layer.tar", blob), (f"{sha(config)[7:]}.json", config),
                                      ("manifest.json", json.dumps(manifest).encode())])
    refuse(store, bad, "diff_id")
    assert blobs_for_diff_id(store, lie) == []


def test_a_broken_second_image_tags_nothing(tmp_path, store):
    """Refs are set only once every image is in: the first image's tags do not appear."""
    path, _, _ = _old_docker_archive(tmp_path, compress_layer=False)
    with tarfile.open(path) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
    manifest = json.loads(dict(members)["manifest.json"])
    manifest[1]["Layers"] = ["cccc/layer.tar"]
    bad = _tar(tmp_path / "bad.tar", [m for m in members if m[0] != "manifest.json"]
               + [("manifest.json", json.dumps(manifest).encode())])
    refuse(store, bad, "cccc/layer.tar is missing")


def test_truncated_and_garbage_inputs(tmp_path, store, layout):
    whole = _layout_tar(layout, tmp_path / "whole.tar").read_bytes()
    biggest = max((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    cut = whole.index(biggest.read_bytes()) + 100  # inside the biggest blob's data
    cases = {
        "not-a-tar": b"hello, this is not a tar archive at all" * 20,
        "empty-tar": _tar(tmp_path / "e.tar", []).read_bytes(),
        "truncated": whole[:cut],
        "bad-gzip": gzip.compress(whole)[:300],
        "bad-index": _tar(tmp_path / "i.tar", [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                                               ("index.json", b"{nope")]).read_bytes(),
        "bad-manifest": _tar(tmp_path / "m.tar", [("manifest.json", b'[{"Config": 5}]')]).read_bytes(),
        "index-of-a-list": _tar(tmp_path / "l.tar", [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                                                     ("index.json", b"[]")]).read_bytes(),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        refuse(store, path, ".")


def test_unsupported_media_types_and_bad_configs(tmp_path, store, layout):
    index = _index(layout)
    index["manifests"][0]["mediaType"] = "application/vnd.example.thing"
    bad = _layout_tar(layout, tmp_path / "t.tar", replace={"index.json": json.dumps(index).encode()})
    refuse(store, bad, "unsupported media type")
    manifest = _manifest(layout)
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    config["rootfs"] = "nope"
    config_data = canonical_json(config)
    manifest["config"] |= {"digest": sha(config_data), "size": len(config_data)}
    manifest_data = canonical_json(manifest)
    index = _index(layout)
    index["manifests"][0] |= {"digest": sha(manifest_data), "size": len(manifest_data)}
    extra = [(f"blobs/sha256/{sha(data)[7:]}", data) for data in (config_data, manifest_data)]
    bad = _layout_tar(layout, tmp_path / "c.tar", replace={"index.json": json.dumps(index).encode()}, extra=extra)
    refuse(store, bad, "rootfs.diff_ids")
