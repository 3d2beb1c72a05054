"""Images for tests, made locally: a busybox rootfs (Debian's busybox-static) or a few files,
stored as a one-layer image. No network."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from buildpy.cas.image import Image, new_config, write_image
from buildpy.cas.layers import add_layer
from buildpy.cas.store import Store

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "echo", "true", "false", "id", "touch", "rm", "mkdir", "ln", "chmod",
           "chown", "mkfifo", "sleep", "stat", "env", "printf", "test", "mv", "cp", "wc", "ps", "kill",
           "mount", "umount", "hostname", "wget", "nc", "grep", "sed", "head", "readlink", "find")


def busybox_or_skip() -> Path:
    if not BUSYBOX.is_file() or shutil.which("busybox") is None:
        pytest.skip("Debian's busybox-static is not installed (apt-get install busybox-static)")
    return BUSYBOX


def _add_dir(t: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    t.addfile(ti)


def _add_file(t: tarfile.TarFile, name: str, data: bytes | str, mode: int = 0o644) -> None:
    if isinstance(data, str):
        data = data.encode()
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    t.addfile(ti, io.BytesIO(data))


def files_tar(files: dict[str, bytes | str]) -> bytes:
    """A layer tar of regular files (parents added as dirs); str values are UTF-8 text."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        made: set[str] = set()
        for name in sorted(files):
            parts = name.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    _add_dir(t, d)
            data = files[name]
            _add_file(t, name.strip("/"), data.encode() if isinstance(data, str) else data)
    return buf.getvalue()


def busybox_tar(extra: dict[str, bytes | str] | None = None) -> bytes:
    """A minimal rootfs: /bin/busybox, applet symlinks, /etc/passwd and /etc/group, /tmp."""
    busybox = busybox_or_skip().read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("bin", "etc", "root", "home", "proc", "sys", "dev", "usr", "usr/bin", "var"):
            _add_dir(t, d)
        _add_dir(t, "tmp", 0o1777)
        _add_file(t, "bin/busybox", busybox, 0o755)
        for applet in APPLETS:
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "busybox"
            ti.mode = 0o777
            t.addfile(ti)
        _add_file(t, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                  "app:x:1000:1000:app:/home/app:/bin/sh\n")
        _add_file(t, "etc/group", "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nstaff:x:50:app\n")
        for name in sorted(extra or {}):
            data = (extra or {})[name]
            _add_file(t, name.strip("/"), data.encode() if isinstance(data, str) else data)
    return buf.getvalue()


def image_from_tars(store: Store, tars: list[bytes], name: str | None = None,
                    compression: str = "gzip", config: dict | None = None) -> Image:
    """Store an image whose layers are `tars` (uncompressed), tagged `name` when given."""
    cfg = new_config(created="2024-01-01T00:00:00Z")
    if config:
        cfg["config"].update(config)
    layers = []
    with store.lease():
        for tar in tars:
            layer = add_layer(store, io.BytesIO(tar), compression)
            layers.append(layer.descriptor)
            cfg["rootfs"]["diff_ids"].append(layer.diff_id)
            cfg["history"].append({"created": "2024-01-01T00:00:00Z", "created_by": "imagekit"})
        image = write_image(store, cfg, layers)
        if name:
            store.set_ref(name, image.manifest_descriptor)
    return image


def busybox_image(store: Store, name: str | None = "docker.io/library/busybox:latest",
                  extra: dict[str, bytes | str] | None = None) -> Image:
    return image_from_tars(store, [busybox_tar(extra)], name, config={"Cmd": ["sh"]})
