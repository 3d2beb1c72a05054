"""The `testdata/dockerfiles/` cases: reading a case, building it, and reading an image's tree
(ours from the store, buildah's from an OCI layout) entry by entry for comparison.

A case is a directory with a Dockerfile, its context, and `expected.json` (see the README
there): the flags to build with, the files the image must hold (type, mode, ids, content or
link target), paths it must not hold, config fields, history, or the error a build must end in.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from buildpy.cas.store import Store

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "testdata" / "dockerfiles"


def case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if (p / "expected.json").is_file())


def expected(case: Path) -> dict[str, Any]:
    return json.loads((case / "expected.json").read_text())


def build_args(case: Path, exp: dict[str, Any], url: str = "") -> list[str]:
    args = [a.replace("{context}", str(case)) for a in exp.get("args", [])]
    if url:
        args += ["--build-arg", f"URL={url}"]
    return args


@contextmanager
def served(files: dict[str, str]) -> Iterator[str]:
    """An http server on 127.0.0.1 serving `files`; yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- trees -------------------------------------------------------------------------------------

Node = dict[str, Any]


def unpack_store_image(store: Store, name: str, dest: Path) -> dict[str, Any]:
    """Unpack the image `name` of our store into `dest`; returns its config."""
    from buildpy.cas.reference import resolve
    from buildpy.cas.unpack import unpack_blob

    _n, image = resolve(store, name)
    dest.mkdir(parents=True, exist_ok=True)
    for layer in image.layers:
        unpack_blob(store, layer, dest, whiteouts="apply")
    return image.config


def unpack_oci_layout(layout: Path, dest: Path) -> dict[str, Any]:
    """Unpack the (only) image of an OCI layout into `dest`; returns its config."""
    from buildpy.cas.compress import decompress_reader
    from buildpy.cas.media import layer_compression
    from buildpy.cas.unpack import unpack_layer

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        with open(blob(layer["digest"]), "rb") as f, decompress_reader(f, layer_compression(layer["mediaType"])) as r:
            unpack_layer(r, dest, whiteouts="apply")
    return config


def node(root: Path, rel: str) -> Node | None:
    path = root / rel.lstrip("/")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else \
        "file" if stat.S_ISREG(st.st_mode) else "other"
    out: Node = {"type": kind, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "gid": st.st_gid,
                 "mtime": int(st.st_mtime)}
    if kind == "file":
        data = path.read_bytes()
        out["content"] = data.decode("utf-8", "replace") if len(data) < 4096 else hashlib.sha256(data).hexdigest()
    elif kind == "symlink":
        out["linkname"] = os.readlink(path)
    return out


def tree(root: Path) -> dict[str, Node]:
    out: dict[str, Node] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            rel = "/" + os.path.relpath(os.path.join(dirpath, name), root)
            n = node(root, rel)
            if n is not None:
                out[rel] = n
    return out
