"""The image tree (`tree`, `tree --affected`) and `history` over a store of locally made images:
base (2 layers) ← app1, app2 (+1 each) ← app1-debug (+1); base's layers again as zstd (the same
diffIDs); an unrelated image."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime

import pytest

from buildpy.cas.image import Image, new_config, write_image
from buildpy.cas.layers import Layer, add_layer
from buildpy.cas.store import Store, StoreError
from buildpy.containers.display import human_size
from buildpy.containers.history import history, history_json, image_history, render_history
from buildpy.containers.tree import (
    Node,
    affected,
    affected_json,
    build_tree,
    render_affected,
    render_tree,
    short,
    tree_json,
)
from tests.imagekit import files_tar

CREATED = "2024-01-01T00:00:00Z"
NOW = datetime.fromisoformat("2026-03-01T00:00:00+00:00").timestamp()  # 2 years and 2 months later


def _ref(name: str) -> str:
    return f"docker.io/library/{name}"


def _layer(store: Store, files: dict[str, str], compression: str = "gzip") -> Layer:
    with store.lease():
        return add_layer(store, io.BytesIO(files_tar(files)), compression)


def _image(store: Store, layers: list[Layer], names: list[str], history: list[dict] | None = None,
           cmd: list[str] | None = None) -> Image:
    cfg = new_config(created=CREATED)
    if cmd:
        cfg["config"]["Cmd"] = cmd
    cfg["rootfs"]["diff_ids"] = [layer.diff_id for layer in layers]
    cfg["history"] = history if history is not None else [
        {"created": CREATED, "created_by": f"COPY layer{i} /"} for i in range(len(layers))
    ]
    with store.lease():
        image = write_image(store, cfg, [layer.descriptor for layer in layers])
        for name in names:
            store.set_ref(_ref(name), image.manifest_descriptor)
    return image


@dataclass(frozen=True)
class Fixture:
    store: Store
    base: Image
    base_zstd: Image
    app1: Image
    app2: Image
    debug: Image
    other: Image
    b1: Layer
    b2: Layer
    b2_zstd: Layer


@pytest.fixture
def fx(tmp_path) -> Fixture:
    store = Store(tmp_path / "store")
    b1 = _layer(store, {"etc/os-release": "base\n", "bin/sh": "x" * 5000})
    b2 = _layer(store, {"usr/lib/libc.so": "libc" * 3000})
    b1z = _layer(store, {"etc/os-release": "base\n", "bin/sh": "x" * 5000}, "zstd")
    b2z = _layer(store, {"usr/lib/libc.so": "libc" * 3000}, "zstd")
    a1 = _layer(store, {"app/one": "app one"})
    a2 = _layer(store, {"app/two": "app two"})
    d1 = _layer(store, {"usr/bin/gdb": "debugger"})
    u1 = _layer(store, {"other": "unrelated"})
    base = _image(store, [b1, b2], ["base:1"])
    base_zstd = _image(store, [b1z, b2z], ["base:zstd"])
    app1 = _image(store, [b1, b2, a1], ["app1:latest", "app1:v1"],
                  history=[{"created_by": "ADD rootfs.tar /"}, {"created_by": "RUN install libc"},
                           {"created_by": "ENV APP=1", "empty_layer": True},
                           {"created_by": "COPY one /app/"}])
    app2 = _image(store, [b1, b2, a2], ["app2:latest"])
    debug = _image(store, [b1, b2, a1, d1], ["app1-debug:latest"])
    other = _image(store, [u1], ["other:latest"])
    return Fixture(store, base, base_zstd, app1, app2, debug, other, b1, b2, b2z)


def _find(node: Node, diff_id: str) -> Node:
    stack = [node]
    while stack:
        n = stack.pop()
        if n.layer == diff_id:
            return n
        stack.extend(n.children)
    raise AssertionError(f"no node {diff_id}")


def _tags(node: Node) -> list[tuple[str, ...]]:
    return [i.tags for i in node.images]


# the tree


def test_tree_shares_the_base_node(fx: Fixture) -> None:
    root = build_tree(fx.store)
    assert root.layer is None and root.images == ()
    assert [c.layer for c in root.children] == [fx.b1.diff_id, fx.other.diff_ids[0]]
    base_node = _find(root, fx.b2.diff_id)
    # gzip and zstd copies of base: one node (same diffIDs), two images (two manifests, one config)
    assert _tags(base_node) == [("base:1",), ("base:zstd",)]
    assert {i.digest for i in base_node.images} == {fx.base.digest, fx.base_zstd.digest}
    assert {i.id for i in base_node.images} == {fx.base.id}
    assert [c.layer for c in base_node.children] == [fx.app1.diff_ids[2], fx.app2.diff_ids[2]]
    app1_node, app2_node = base_node.children
    assert _tags(app1_node) == [("app1:latest", "app1:v1")]
    assert _tags(app2_node) == [("app2:latest",)]
    assert [c.layer for c in app1_node.children] == [fx.debug.diff_ids[3]]
    assert _tags(app1_node.children[0]) == [("app1-debug:latest",)]
    # history entries that are not empty_layer are matched to layers in order; a node's is taken
    # from the image with the fewest layers through it (app1's, not app1-debug's, which sorts first)
    assert base_node.created_by == "COPY layer1 /"
    assert app1_node.created_by == "COPY one /app/"
    # size and digest are the (first, gzip) blob's
    assert (base_node.digest, base_node.size) == (fx.b2.descriptor.digest, fx.b2.descriptor.size)


def test_render_tree_text(fx: Fixture) -> None:
    text = render_tree(build_tree(fx.store))

    def size(image: Image, i: int) -> str:
        return human_size(image.layers[i].size)

    def s(image: Image, i: int) -> str:
        return short(image.diff_ids[i])

    b, a1, a2, d, o = fx.base, fx.app1, fx.app2, fx.debug, fx.other
    assert text == (
        "scratch\n"
        f"├── {s(b, 0)}  {size(b, 0)}  COPY layer0 /\n"
        f"│   └── {s(b, 1)}  {size(b, 1)}  COPY layer1 /  [base:1] [base:zstd]\n"
        f"│       ├── {s(a1, 2)}  {size(a1, 2)}  COPY one /app/  [app1:latest, app1:v1]\n"
        f"│       │   └── {s(d, 3)}  {size(d, 3)}  COPY layer3 /  [app1-debug:latest]\n"
        f"│       └── {s(a2, 2)}  {size(a2, 2)}  COPY layer2 /  [app2:latest]\n"
        f"└── {s(o, 0)}  {size(o, 0)}  COPY layer0 /  [other:latest]\n"
    )


def test_tree_json_shape(fx: Fixture) -> None:
    doc = tree_json(build_tree(fx.store))
    json.dumps(doc)  # serialisable
    keys = {"layer", "digest", "size", "created_by", "images", "children"}
    assert set(doc) == keys and doc["layer"] is None and doc["digest"] is None
    first = doc["children"][0]
    assert set(first) == keys
    assert first["layer"] == fx.b1.diff_id and first["digest"] == fx.b1.descriptor.digest
    assert first["size"] == fx.b1.descriptor.size and first["images"] == []
    base_node = first["children"][0]
    assert base_node["images"] == [
        {"tags": ["base:1"], "digest": fx.base.digest, "id": fx.base.id},
        {"tags": ["base:zstd"], "digest": fx.base_zstd.digest, "id": fx.base_zstd.id},
    ]
    assert [c["images"][0]["tags"] for c in base_node["children"]] == [["app1:latest", "app1:v1"], ["app2:latest"]]


def test_untagged_images_are_not_shown_and_an_empty_store_is_scratch(tmp_path) -> None:
    store = Store(tmp_path / "store")
    assert render_tree(build_tree(store)) == "scratch\n"
    _image(store, [_layer(store, {"a": "b"})], [])
    assert build_tree(store).children == ()


def test_a_layerless_image_ends_at_scratch(tmp_path) -> None:
    store = Store(tmp_path / "store")
    _image(store, [], ["empty:1"])
    assert render_tree(build_tree(store)) == "scratch  [empty:1]\n"


def test_long_created_by_is_cut_on_one_line(tmp_path) -> None:
    store = Store(tmp_path / "store")
    long = "RUN <<EOF\n" + "apt-get install -y " + "pkg " * 40 + "\nEOF"
    _image(store, [_layer(store, {"a": "b"})], ["x:1"], history=[{"created_by": long}])
    line = render_tree(build_tree(store)).splitlines()[1]
    created_by = line.split("  ")[2]
    assert len(created_by) == 60 and created_by.endswith("…") and "\n" not in created_by


# --affected


def _affected_tags(text: str, store: Store) -> set[str]:
    return {tag for h in affected(store, text).images for tag in h.tags}


def test_affected_by_a_layer(fx: Fixture) -> None:
    want = {"base:1", "base:zstd", "app1:latest", "app1:v1", "app2:latest", "app1-debug:latest"}
    b2 = fx.b2.diff_id
    assert _affected_tags(b2, fx.store) == want
    assert _affected_tags(b2.removeprefix("sha256:"), fx.store) == want
    assert _affected_tags(short(b2), fx.store) == want
    # by blob digest: the zstd blob names the same content as the gzip one
    assert _affected_tags(fx.b2_zstd.descriptor.digest, fx.store) == want
    assert _affected_tags(short(fx.b2.descriptor.digest), fx.store) == want
    a = affected(fx.store, short(b2))
    assert a.kind == "layer" and a.target == b2
    assert {h.layer_index for h in a.images} == {1}
    assert sorted(h.layers for h in a.images) == [2, 2, 3, 3, 4]
    text = render_affected(a)
    assert len(text.splitlines()) == 5
    debug_line = next(line for line in text.splitlines() if line.startswith("app1-debug:latest"))
    assert debug_line.split() == ["app1-debug:latest", short(fx.debug.id), "layer", "2", "of", "4"]
    assert "app1:latest, app1:v1 " in text and "other" not in text


def test_affected_by_an_image(fx: Fixture) -> None:
    a = affected(fx.store, "app1")
    assert a.kind == "image" and a.target == fx.app1.digest and a.tags == ("app1:latest", "app1:v1")
    assert [h.tags for h in a.images] == [("app1-debug:latest",)]
    assert render_affected(a).split() == ["app1-debug:latest", short(fx.debug.id), "on", "layer", "3", "of", "4"]
    # by image ID too; the image itself is not listed under its other tag
    assert [h.tags for h in affected(fx.store, short(fx.app1.id)).images] == [("app1-debug:latest",)]
    base = affected(fx.store, "base:1")
    assert [h.tags for h in base.images] == [
        ("app1-debug:latest",), ("app1:latest", "app1:v1"), ("app2:latest",), ("base:zstd",)
    ]
    assert "base:zstd" in render_affected(base) and "same layers" in render_affected(base)
    assert render_affected(affected(fx.store, "other")) == "no tagged image is built on other:latest\n"
    assert affected(fx.store, "other").images == ()


def test_affected_json_shape(fx: Fixture) -> None:
    doc = affected_json(affected(fx.store, "app1:latest"))
    json.dumps(doc)
    assert doc == {
        "kind": "image",
        "target": fx.app1.digest,
        "tags": ["app1:latest", "app1:v1"],
        "id": fx.app1.id,
        "images": [{"tags": ["app1-debug:latest"], "digest": fx.debug.digest, "id": fx.debug.id,
                    "layer_index": 2, "layers": 4}],
    }
    layer = affected_json(affected(fx.store, fx.b1.diff_id))
    assert layer["kind"] == "layer" and layer["target"] == fx.b1.diff_id and layer["id"] is None
    assert len(layer["images"]) == 5


def test_affected_unknown(fx: Fixture) -> None:
    for text in ("0123456789abcdef", "sha256:" + "0" * 64, "nosuch:tag", "Not A Name!"):
        with pytest.raises(StoreError, match=f"^no layer or image {text} in the store"):
            affected(fx.store, text)
    assert StoreError.user_facing


def test_affected_ambiguous_prefix(tmp_path) -> None:
    store = Store(tmp_path / "store")
    layers = [_layer(store, {"a": "1"}), _layer(store, {"b": "2"})]
    # a config naming made-up diffIDs that share 12 hex digits (real ones never do)
    fake = [Layer(layers[0].descriptor, "sha256:abcdef123456" + "0" * 52),
            Layer(layers[1].descriptor, "sha256:abcdef123456" + "1" * 52)]
    _image(store, fake, ["fake:1"])
    with pytest.raises(StoreError, match="'abcdef123456' is ambiguous: it matches 2 layers"):
        affected(store, "abcdef123456")
    with pytest.raises(StoreError, match="ambiguous"):
        affected(store, "sha256:abcdef123456")
    assert affected(store, "abcdef1234561").target == fake[1].diff_id
    assert affected(store, "abcdef1234561").images[0].layer_index == 1


# history


def test_history_rows_newest_first(fx: Fixture) -> None:
    rows = history(fx.store, "app1:v1")
    assert [r.created_by for r in rows] == ["COPY one /app/", "ENV APP=1", "RUN install libc", "ADD rootfs.tar /"]
    assert [r.id for r in rows] == [fx.app1.id, None, None, None]
    assert [r.size for r in rows] == [fx.app1.layers[2].size, 0, fx.b2.descriptor.size, fx.b1.descriptor.size]
    assert [r.empty_layer for r in rows] == [False, True, False, False]
    assert [r.layer for r in rows] == [fx.app1.diff_ids[2], None, fx.b2.diff_id, fx.b1.diff_id]


def test_render_history(tmp_path) -> None:
    store = Store(tmp_path / "store")
    layers = [_layer(store, {"rootfs": "r" * 2_000_000}), _layer(store, {"app": "a"})]
    long_run = "/bin/sh -c apt-get update && apt-get install -y curl ca-certificates git"
    image = _image(store, layers, ["hist:1"], history=[
        {"created": CREATED, "created_by": "ADD file:abc in / ", "comment": "buildpy.dockerfile.v0"},
        {"created": CREATED, "created_by": "ENV\tPATH=/usr/bin", "empty_layer": True},
        {"created": CREATED, "created_by": long_run},
        {"created": "2026-02-28T22:30:00.123456789Z", "created_by": 'CMD ["sh"]', "empty_layer": True},
    ])
    rows = history(store, "hist:1")
    lines = render_history(rows, now=NOW).splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert lines[1].startswith(short(image.id) + "   ")
    assert 'About an hour ago   CMD ["sh"]' in lines[1] and " 0B " in lines[1]
    assert lines[2].startswith("<missing>") and "2 years ago" in lines[2]
    cut = long_run[:44] + "…"
    assert cut in lines[2] and human_size(layers[1].descriptor.size) in lines[2]
    assert "ENV PATH=/usr/bin" in lines[3] and " 0B " in lines[3]
    assert lines[4].rstrip().endswith("buildpy.dockerfile.v0")
    assert human_size(layers[0].descriptor.size).endswith("kB")  # 2 MB of one byte compresses well
    assert len(lines) == 5
    full = render_history(rows, no_trunc=True, now=NOW)
    assert long_run in full and image.id in full
    doc = history_json(rows)
    json.dumps(doc)
    assert doc[0] == {"id": image.id, "created": "2026-02-28T22:30:00.123456789Z", "created_by": 'CMD ["sh"]',
                      "size": 0, "comment": "", "empty_layer": True, "layer": None, "digest": None}
    assert doc[1]["digest"] == layers[1].descriptor.digest and doc[1]["layer"] == layers[1].diff_id


@pytest.mark.parametrize("entries, want_sizes", [
    # fewer layer entries than layers: the extra layers get rows of their own
    ([{"created_by": "ADD a"}], ["c", "b", "a"]),
    # more layer entries than layers: the ones left over show 0B
    ([{"created_by": f"RUN {i}"} for i in range(5)], [0, 0, "c", "b", "a"]),
    # no history at all
    ([], ["c", "b", "a"]),
    # not even a list (a broken config)
    ("garbage", ["c", "b", "a"]),
])
def test_history_of_a_mismatched_config(tmp_path, entries, want_sizes) -> None:
    store = Store(tmp_path / "store")
    layers = [_layer(store, {"f": name * (100 * (i + 1))}) for i, name in enumerate("abc")]
    sizes = {name: layer.descriptor.size for name, layer in zip("abc", layers)}
    image = _image(store, layers, ["broken:1"], history=entries)
    rows = image_history(image)
    assert [r.size for r in rows] == [sizes.get(s, s) for s in want_sizes]
    assert rows[0].id == image.id and all(r.id is None for r in rows[1:])
    text = render_history(rows, now=NOW)
    assert len(text.splitlines()) == len(want_sizes) + 1


def test_history_of_an_unknown_image(fx: Fixture) -> None:
    with pytest.raises(StoreError, match="no image nosuch"):
        history(fx.store, "nosuch")
