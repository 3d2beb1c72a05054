"""`history IMAGE`: an image's history entries as `docker history` lists them, newest first.

Owns: `history`/`image_history` (the rows), `render_history` (the table) and `history_json`.
Entries marked `empty_layer` (ENV, CMD, …) take no layer; the others take the image's layers in
order. A config whose history disagrees with its layers is listed as well as it can be: an entry
left without a layer shows 0B, a layer left without an entry gets a row of its own.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from buildpy.cas.image import Image
from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from buildpy.containers import display
from buildpy.containers.display import human_size
from buildpy.containers.tree import ellipsis, short

CREATED_BY_WIDTH = 45  # docker history's truncation


@dataclass(frozen=True)
class Row:
    id: str | None  # the image ID on the newest row; None (shown `<missing>`) on the others
    created: str | None  # as the config has it (RFC 3339)
    created_by: str
    size: int  # the layer blob's (compressed) size; 0 for an entry without a layer
    comment: str
    empty_layer: bool
    layer: str | None  # the diffID of the layer this entry made, when it made one
    digest: str | None  # that layer's blob


def history(store: Store, text: str) -> list[Row]:
    """The history of the image `text` names (see `reference.resolve`), newest first."""
    _, image = resolve(store, text)
    return image_history(image)


def image_history(image: Image) -> list[Row]:
    """`image`'s history entries matched to its layers, newest first."""
    entries = image.config.get("history")
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    layers = image.layers
    diff_ids = image.diff_ids
    oldest_first: list[Row] = []
    next_layer = 0
    for e in entries:
        empty = bool(e.get("empty_layer"))
        layer = digest = None
        size = 0
        if not empty and next_layer < len(layers):
            blob = layers[next_layer]
            digest, size = blob.digest, blob.size
            layer = diff_ids[next_layer] if next_layer < len(diff_ids) else None
            next_layer += 1
        created = e.get("created")
        oldest_first.append(Row(
            None,
            created if isinstance(created, str) else None,
            str(e.get("created_by") or ""),
            size,
            str(e.get("comment") or ""),
            empty,
            layer,
            digest,
        ))
    # layers no entry accounts for (a config without history, or too short a one)
    for i in range(next_layer, len(layers)):
        layer = diff_ids[i] if i < len(diff_ids) else None
        oldest_first.append(Row(None, None, "", layers[i].size, "", False, layer, layers[i].digest))
    rows = oldest_first[::-1]
    if rows:
        top = rows[0]
        rows[0] = Row(image.id, top.created, top.created_by, top.size, top.comment, top.empty_layer,
                      top.layer, top.digest)
    else:  # nothing at all to list: still say which image it is
        rows = [Row(image.id, image.config.get("created") if isinstance(image.config.get("created"), str) else None,
                    "", 0, "", True, None, None)]
    return rows


def render_history(rows: list[Row], no_trunc: bool = False, now: float | None = None) -> str:
    """The table `docker history` prints: IMAGE, CREATED, CREATED BY, SIZE, COMMENT."""
    now = time.time() if now is None else now
    table = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for r in rows:
        image = "<missing>" if r.id is None else (r.id if no_trunc else short(r.id))
        created_by = r.created_by.replace("\t", " ")
        created_by = _one_line(created_by) if no_trunc else ellipsis(created_by, CREATED_BY_WIDTH)
        table.append([image, display.ago(display.parse_time(r.created), now), created_by, human_size(r.size), _one_line(r.comment)])
    return display.table(table[0], table[1:])


def history_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "created": r.created,
            "created_by": r.created_by,
            "size": r.size,
            "comment": r.comment,
            "empty_layer": r.empty_layer,
            "layer": r.layer,
            "digest": r.digest,
        }
        for r in rows
    ]


def _one_line(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text)
