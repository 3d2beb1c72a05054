"""The image tree: the tagged images in the store drawn as the tree of the layers they share,
and `--affected`: which images contain a layer, or are built on an image (what must be rebuilt
after a fix to it).

Owns: `build_tree`/`render_tree`/`tree_json` and `affected`/`render_affected`/`affected_json`,
plus `ellipsis`, which `history` shares. It reads the
store only (refs, manifests, configs); it never reads a layer blob. Untagged images are not
shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from buildpy.cas.image import Image
from buildpy.cas.reference import InvalidReference, Tagged, parse, resolve, tagged_images
from buildpy.cas.store import Store, StoreError
from buildpy.containers.display import human_size

SCRATCH = "scratch"
CREATED_BY_WIDTH = 60
_LAYER_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")
_SPACES_RE = re.compile(r"[\t\r\n]+")


@dataclass(frozen=True)
class ImageAt:
    """A tagged image (one manifest) and the tags naming it, as docker prints them."""

    tags: tuple[str, ...]
    digest: str  # the manifest's digest
    id: str  # the config's digest (docker's image ID)


@dataclass(frozen=True)
class Node:
    """One layer in the tree; the root (`layer` None) is scratch."""

    layer: str | None  # the diffID
    digest: str | None  # a blob holding it (see build_tree for which, when there are several)
    size: int  # that blob's (compressed) size
    created_by: str  # from the history entry that made it, "" when unknown
    images: tuple[ImageAt, ...]  # the images whose last layer this is
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Hit:
    """An image `affected` found."""

    tags: tuple[str, ...]
    digest: str
    id: str
    layer_index: int  # 0-based: the layer asked about in this image (for an image: its top layer; -1: none)
    layers: int  # how many layers this image has


@dataclass(frozen=True)
class Affected:
    kind: str  # "layer" or "image"
    target: str  # the layer's diffID, or the image's manifest digest
    tags: tuple[str, ...]  # the target image's tags (empty for a layer)
    target_id: str | None  # the target image's ID (None for a layer)
    images: tuple[Hit, ...]


# display helpers (shared with history)


def ellipsis(text: str, width: int) -> str:
    """`text` on one line, at most `width` characters, cut with "…" (docker's stringutils.Ellipsis)."""
    text = _SPACES_RE.sub(" ", text)
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def short(digest: str | None) -> str:
    """The 12 hex digits docker shows for a digest."""
    if not digest:
        return ""
    return digest.partition(":")[2][:12] if ":" in digest else digest[:12]


def familiar(name: str) -> str:
    """`base:1` for `docker.io/library/base:1`; a name we cannot parse as it is."""
    try:
        return parse(name).familiar
    except InvalidReference:
        return name


def layer_created_by(image: Image) -> list[str]:
    """The `created_by` of the history entries that made a layer (not empty_layer), in layer
    order; tolerant of a missing or malformed history (shorter or longer than the layers)."""
    history = image.config.get("history")
    if not isinstance(history, list):
        return []
    return [
        str(e.get("created_by") or "")
        for e in history
        if isinstance(e, dict) and not e.get("empty_layer")
    ]


# the tree


@dataclass
class _Draft:
    """A node while the tree is being built (frozen into a Node at the end)."""

    layer: str | None
    digest: str | None
    size: int
    created_by: str
    images: list[ImageAt]
    children: dict[str, _Draft]
    rank: int = 1 << 30  # the layer count of the image the blob and created_by were taken from


def _groups(tagged: list[Tagged]) -> list[tuple[Image, tuple[str, ...]]]:
    """The tagged images, one per manifest, with their tags; in the order of their first tag."""
    by_digest: dict[str, tuple[Image, list[str]]] = {}
    for t in tagged:
        by_digest.setdefault(t.image.digest, (t.image, []))[1].append(familiar(t.name))
    return [(image, tuple(sorted(tags))) for image, tags in by_digest.values()]


def build_tree(store: Store, errors: list[str] | None = None) -> Node:
    """The tree of the tagged images' layers from scratch; refs that do not load are skipped
    (and described in `errors` when given)."""
    root = _Draft(None, None, 0, "", [], {})
    for image, tags in _groups(tagged_images(store, errors)):
        # Keyed by diffID, i.e. by uncompressed content: a gzip and a zstd copy of the same layer
        # are one node, and two images share a node exactly when their diff_ids share a prefix.
        layers = image.layers
        made_by = layer_created_by(image)
        diff_ids = image.diff_ids
        node = root
        for i, diff_id in enumerate(diff_ids):
            child = node.children.get(diff_id)
            if child is None:
                child = _Draft(diff_id, None, 0, "", [], {})
                node.children[diff_id] = child
            # what a node says (blob, created_by) comes from the image with the fewest layers
            # through it, the nearest to the one that made it; on a tie, the first in tag order
            if len(diff_ids) < child.rank:
                child.rank = len(diff_ids)
                if i < len(layers):
                    child.digest, child.size = layers[i].digest, layers[i].size
                if i < len(made_by):
                    child.created_by = made_by[i]
            node = child
        node.images.append(ImageAt(tags, image.digest, image.id))
    return _freeze(root)


def _freeze(d: _Draft) -> Node:
    return Node(d.layer, d.digest, d.size, d.created_by, tuple(d.images),
                tuple(_freeze(c) for c in d.children.values()))


def _images_label(images: tuple[ImageAt, ...]) -> str:
    return " ".join(f"[{', '.join(i.tags) or '<none>'}]" for i in images)


def _node_label(node: Node) -> str:
    parts = [short(node.layer), human_size(node.size)]
    if node.created_by:
        parts.append(ellipsis(node.created_by, CREATED_BY_WIDTH))
    if node.images:
        parts.append(_images_label(node.images))
    return "  ".join(parts)


def render_tree(node: Node) -> str:
    """The tree as text, drawn like tree(1): one line per layer, `short-diffID  size  created_by
    [tags of an image ending here] …`, the root line `scratch`."""
    first = SCRATCH + (f"  {_images_label(node.images)}" if node.images else "")
    lines = [first]
    # iterative, so a deep image cannot reach the recursion limit
    stack: list[tuple[Node, str, bool]] = [(c, "", i == len(node.children) - 1)
                                           for i, c in enumerate(node.children)][::-1]
    while stack:
        n, prefix, last = stack.pop()
        lines.append(prefix + ("└── " if last else "├── ") + _node_label(n))
        inner = prefix + ("    " if last else "│   ")
        stack.extend([(c, inner, i == len(n.children) - 1) for i, c in enumerate(n.children)][::-1])
    return "\n".join(lines) + "\n"


def tree_json(node: Node) -> dict[str, Any]:
    """The tree for `--json`; the root has `layer` and `digest` null."""
    return {
        "layer": node.layer,
        "digest": node.digest,
        "size": node.size,
        "created_by": node.created_by,
        "images": [{"tags": list(i.tags), "digest": i.digest, "id": i.id} for i in node.images],
        "children": [tree_json(c) for c in node.children],
    }


# --affected


def _find_layer(groups: list[tuple[Image, tuple[str, ...]]], text: str) -> str | None:
    """The diffID `text` names (a diffID or a blob digest, full or a prefix of ≥12 hex digits,
    with or without `sha256:`), None when it names no layer of a tagged image."""
    m = _LAYER_PREFIX_RE.fullmatch(text)
    if m is None:
        return None
    prefix = "sha256:" + m.group(1)
    found: set[str] = set()
    for image, _ in groups:
        diff_ids = image.diff_ids
        found.update(d for d in diff_ids if d.startswith(prefix))
        # a blob digest stands for its content: the zstd blob of a layer finds the gzip copies too
        found.update(d for layer, d in zip(image.layers, diff_ids) if layer.digest.startswith(prefix))
    if len(found) > 1:
        raise StoreError(f"layer prefix {text!r} is ambiguous: it matches {len(found)} layers; give more digits")
    return next(iter(found), None)


def affected(store: Store, text: str) -> Affected:
    """What a fix to `text` touches. For a layer (see `_find_layer`): every tagged image that
    contains it. For an image (anything `reference.resolve` takes): every other tagged image
    built on it, i.e. whose diff_ids start with all of its diff_ids (one with exactly the same
    layers, like a recompressed copy, included); the image itself, under any tag, is not."""
    groups = _groups(tagged_images(store))
    diff_id = _find_layer(groups, text)
    if diff_id is not None:
        hits = [
            Hit(tags, image.digest, image.id, image.diff_ids.index(diff_id), len(image.diff_ids))
            for image, tags in groups
            if diff_id in image.diff_ids
        ]
        return Affected("layer", diff_id, (), None, tuple(hits))
    try:
        _, target = resolve(store, text)
    except (StoreError, InvalidReference) as e:
        if "ambiguous" in str(e):
            raise
        raise StoreError(f"no layer or image {text} in the store {store.root}") from None
    base = target.diff_ids
    hits = [
        Hit(tags, image.digest, image.id, len(base) - 1, len(image.diff_ids))
        for image, tags in groups
        if image.digest != target.digest and image.diff_ids[: len(base)] == base
    ]
    own = next((tags for image, tags in groups if image.digest == target.digest), ())
    return Affected("image", target.digest, own, target.id, tuple(hits))


def _where(a: Affected, h: Hit) -> str:
    if a.kind == "layer":
        return f"layer {h.layer_index + 1} of {h.layers}"
    if h.layer_index + 1 == h.layers:
        return "same layers"
    if h.layer_index < 0:
        return f"on scratch, {h.layers} layers"
    return f"on layer {h.layer_index + 1} of {h.layers}"


def render_affected(a: Affected) -> str:
    """One line per image: its tags (or <none>), its short image ID, and where the layer (or the
    image's top layer) sits in it, e.g. `app1:latest, app1:v1   3c9e0a1b2d4f   layer 2 of 3`.
    A sentence when nothing is built on the image."""
    if not a.images:
        name = ", ".join(a.tags) or short(a.target)
        return f"no tagged image is built on {name}\n"
    rows = [[", ".join(h.tags) or "<none>", short(h.id), _where(a, h)] for h in a.images]
    widths = [max(len(r[i]) for r in rows) + 3 for i in range(2)]
    return "".join(r[0].ljust(widths[0]) + r[1].ljust(widths[1]) + r[2] + "\n" for r in rows)


def affected_json(a: Affected) -> dict[str, Any]:
    return {
        "kind": a.kind,
        "target": a.target,
        "tags": list(a.tags),
        "id": a.target_id,
        "images": [
            {"tags": list(h.tags), "digest": h.digest, "id": h.id, "layer_index": h.layer_index, "layers": h.layers}
            for h in a.images
        ],
    }
