"""What we write validates against the OCI image-spec JSON schemas (read from
../shared/conformance/oci-image-spec, never copied in)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from buildpy.cas import archive
from buildpy.cas.store import Store
from tests.conftest import conformance_dir
from tests.imagekit import busybox_image, files_tar, image_from_tars


def _validator(name: str) -> jsonschema.Draft4Validator:
    schemas = conformance_dir("oci-image-spec")

    def retrieve(uri: str) -> Resource:
        # the schemas name each other by relative file names under several nested ids
        path = schemas / uri.rstrip("/").rsplit("/", 1)[-1]
        if not path.is_file():
            raise LookupError(uri)
        return Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT4)

    schema = json.loads((schemas / name).read_text())
    return jsonschema.Draft4Validator(schema, registry=Registry(retrieve=retrieve))


def _valid(name: str, obj) -> None:
    errors = sorted(_validator(name).iter_errors(obj), key=str)
    assert not errors, "\n".join(e.message for e in errors)


@pytest.fixture
def layout(tmp_path) -> Path:
    store = Store(tmp_path / "store")
    busybox_image(store, "docker.io/library/busybox:latest")
    image_from_tars(store, [files_tar({"x": "1"}), files_tar({"y": "2"})], "localhost:5000/two:v1",
                    compression="zstd", config={"Env": ["A=1"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}}})
    out = tmp_path / "layout"
    archive.export_oci(store, ["docker.io/library/busybox:latest", "localhost:5000/two:v1"], out)
    return out


def _validate_layout(layout: Path, images: int) -> None:
    _valid("image-layout-schema.json", json.loads((layout / "oci-layout").read_text()))
    index = json.loads((layout / "index.json").read_text())
    _valid("image-index-schema.json", index)
    assert len(index["manifests"]) == images
    for entry in index["manifests"]:
        manifest = json.loads((layout / "blobs/sha256" / entry["digest"][7:]).read_text())
        _valid("image-manifest-schema.json", manifest)
        config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
        _valid("config-schema.json", config)
        for layer in manifest["layers"]:
            _valid("content-descriptor.json", layer)


def test_exported_layout_validates(layout):
    _validate_layout(layout, 2)


def test_manifests_made_from_a_docker_archive_validate(layout, tmp_path):
    """Loading a docker archive writes a manifest of our own; it must be as valid as the rest."""
    store = Store(tmp_path / "store")
    archive.load(store, layout)
    archive.export_docker(store, ["docker.io/library/busybox:latest", "localhost:5000/two:v1"], tmp_path / "d.tar")
    other = Store(tmp_path / "other")
    names = [name for name, _ in archive.load(other, tmp_path / "d.tar")]
    archive.export_oci(other, names, tmp_path / "again")
    _validate_layout(tmp_path / "again", 2)


def test_the_validator_can_fail(layout):
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:not a digest"
    index["manifests"][0]["size"] = "12"
    with pytest.raises(AssertionError):
        _valid("image-index-schema.json", index)
    with pytest.raises(AssertionError):
        _valid("config-schema.json", {"architecture": 5, "os": "linux"})
