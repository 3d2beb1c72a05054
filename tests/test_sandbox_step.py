"""run_step end to end on a busybox image: the step's change read back from the stored layer
entry by entry, through overlayfs and through the copy fallback alike; exit statuses; empty
steps; layers stacking; temp dirs gone afterwards, Ctrl-C included."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import pytest

from buildpy.cas.compress import decompress_reader
from buildpy.cas.layers import Layer
from buildpy.cas.media import layer_compression
from buildpy.cas.store import Store
from buildpy.sandbox import step
from buildpy.sandbox.spec import Process
from tests.test_sandbox_rootless import rootless  # noqa: F401  (a fixture)


def step_or_skip() -> None:
    from tests.imagekit import busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    busybox_or_skip()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    step_or_skip()
    return Store(tmp_path / "store")


@pytest.fixture
def image(store):
    from tests.imagekit import busybox_image

    return busybox_image(store)


def layer_entries(store: Store, layer: Layer) -> list[tuple]:
    """(name, type, mode, uid, gid, linkname, data) of each entry of a stored layer, in order."""
    with store.open_blob(layer.descriptor.digest) as f:
        data = decompress_reader(f, layer_compression(layer.descriptor.media_type)).read()
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t:
            content = t.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.linkname, content))
    return out


def run(store, layers, diff_ids, script, **kw):
    out: list[bytes] = []
    result = step.run_step(store, layers=layers, diff_ids=diff_ids, process=Process(("/bin/sh", "-c", script)),
                           stdout=out.append, **kw)
    return result, b"".join(out).decode()


SCRIPT = """
set -e
rm /etc/group
rm -rf /home && mkdir /home && echo new > /home/file
mkdir /srv && echo linked > /srv/one && ln /srv/one /srv/two
echo s > /bin/suid && chmod 4755 /bin/suid
mkfifo -m 640 /srv/fifo
mkdir -m 1777 /srv/empty
ln -s ../etc/passwd /srv/link
mkdir /srv/app && echo app > /srv/app/f && chown -R 1000:1000 /srv/app
"""

EXPECTED = [
    ("bin", tarfile.DIRTYPE, 0o755, 0, 0, "", None),
    ("bin/suid", tarfile.REGTYPE, 0o4755, 0, 0, "", b"s\n"),
    ("etc", tarfile.DIRTYPE, 0o755, 0, 0, "", None),
    ("etc/.wh.group", tarfile.REGTYPE, 0, 0, 0, "", b""),
    ("home", tarfile.DIRTYPE, 0o755, 0, 0, "", None),
    ("home/.wh..wh..opq", tarfile.REGTYPE, 0, 0, 0, "", b""),
    ("home/file", tarfile.REGTYPE, 0o644, 0, 0, "", b"new\n"),
    ("srv", tarfile.DIRTYPE, 0o755, 0, 0, "", None),
    ("srv/app", tarfile.DIRTYPE, 0o755, 1000, 1000, "", None),
    ("srv/app/f", tarfile.REGTYPE, 0o644, 1000, 1000, "", b"app\n"),
    ("srv/empty", tarfile.DIRTYPE, 0o1777, 0, 0, "", None),
    ("srv/fifo", tarfile.FIFOTYPE, 0o640, 0, 0, "", None),
    ("srv/link", tarfile.SYMTYPE, 0o777, 0, 0, "../etc/passwd", None),
    ("srv/one", tarfile.REGTYPE, 0o644, 0, 0, "", b"linked\n"),
    ("srv/two", tarfile.LNKTYPE, 0o644, 0, 0, "srv/one", None),
]


@pytest.mark.parametrize("mode", ["overlay", "copy"])
def test_step_change_becomes_the_layer(store, image, mode, caplog):
    caplog.set_level(logging.DEBUG, logger="buildpy.sandbox")
    result, _ = run(store, image.layers, image.diff_ids, SCRIPT, rootfs_mode=mode)
    assert (result.exit_code, result.empty) == (0, False)
    assert layer_entries(store, result.layer) == EXPECTED
    said = "overlayfs over" if mode == "overlay" else "a copy of"
    assert any(said in r.getMessage() for r in caplog.records)
    assert os.listdir(store.tmp_dir) == []


def test_auto_mode_picks_a_working_root(store, image):
    result, _ = run(store, image.layers, image.diff_ids, SCRIPT)
    assert layer_entries(store, result.layer) == EXPECTED


def test_auto_mode_falls_back_to_the_copy_when_overlayfs_cannot_mount(store, image, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="buildpy.sandbox")
    monkeypatch.setattr(step, "_overlay_ok", {})
    monkeypatch.setattr(step, "_PROBE", "import sys; sys.exit(1)")  # as where the mount fails
    result, _ = run(store, image.layers, image.diff_ids, SCRIPT)
    assert layer_entries(store, result.layer) == EXPECTED
    messages = [r.getMessage() for r in caplog.records]
    assert any("overlayfs cannot be mounted" in m for m in messages)
    assert any("a copy of" in m for m in messages)


def test_exit_status_propagates_without_a_layer(store, image):
    result, out = run(store, image.layers, image.diff_ids, "echo partial > /f; echo ran; exit 3")
    assert (result.exit_code, result.layer, result.empty) == (3, None, False)
    assert out == "ran\n"
    assert os.listdir(store.tmp_dir) == []


@pytest.mark.parametrize("mode", ["overlay", "copy"])
def test_a_step_that_changes_nothing_is_empty(store, image, mode):
    # reads, and a file opened for writing but left as it was (an overlay copy-up)
    script = "cat /etc/passwd > /dev/null; : >> /etc/group; ls /proc /dev /sys > /dev/null"
    result, _ = run(store, image.layers, image.diff_ids, script, rootfs_mode=mode)
    assert (result.exit_code, result.layer, result.empty) == (0, None, True)
    result, _ = run(store, image.layers, image.diff_ids, "touch /etc/group", rootfs_mode=mode)
    assert [e[0] for e in layer_entries(store, result.layer)] == ["etc", "etc/group"]


def test_layers_stack(store, image):
    first, _ = run(store, image.layers, image.diff_ids, "mkdir /srv && echo one > /srv/f")
    layers = image.layers + [first.layer.descriptor]
    diff_ids = image.diff_ids + [first.layer.diff_id]
    second, out = run(store, layers, diff_ids, "cat /srv/f; rm /srv/f; rm /etc/passwd")
    assert out == "one\n"
    assert [e[0] for e in layer_entries(store, second.layer)] == ["etc", "etc/.wh.passwd", "srv", "srv/.wh.f"]


def test_source_date_epoch_clamps_times(store, image):
    result, _ = run(store, image.layers, image.diff_ids, "echo x > /f", source_date_epoch=1000)
    with store.open_blob(result.layer.descriptor.digest) as f:
        data = decompress_reader(f, "gzip").read()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert [(m.name, m.mtime) for m in t] == [("f", 1000)]


def test_ctrl_c_leaves_no_temp_dir(store, image):
    def interrupt(line: bytes) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        step.run_step(store, layers=image.layers, diff_ids=image.diff_ids,
                      process=Process(("/bin/sh", "-c", "echo go; sleep 30")), stdout=interrupt)
    assert os.listdir(store.tmp_dir) == []


# --- rootless --------------------------------------------------------------------------------

ROOTLESS_DRIVER = r'''
import io, json, os, sys, tarfile, tempfile
from pathlib import Path
from buildpy.cas.compress import decompress_reader
from buildpy.cas.store import Store
from buildpy.sandbox.spec import Process
from buildpy.sandbox.step import run_step
from buildpy.cas.layers import add_layer

def unpack(tar, dest):  # busybox has no whiteouts; tarfile keeps our ids as we are not root
    with tarfile.open(fileobj=tar, mode="r|") as t:
        t.extractall(dest, **({"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}))

args = json.loads(sys.argv[1])
store = Store(tempfile.mkdtemp(prefix="rootless-store-"))
with store.lease():
    base = add_layer(store, open(args["tar"], "rb"), "gzip")
result = run_step(store, layers=[base.descriptor], diff_ids=[base.diff_id], unpacker=unpack,
                  process=Process(("/bin/sh", "-c", args["script"])), rootfs_mode=args["mode"])
entries = []
if result.layer:
    with store.open_blob(result.layer.descriptor.digest) as f:
        data = decompress_reader(f, "gzip").read()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t:
            content = t.extractfile(m).read().decode() if m.isreg() else None
            entries.append([m.name, m.uid, m.gid, oct(m.mode), content])
print(json.dumps({"code": result.exit_code, "entries": entries, "tmp": os.listdir(store.tmp_dir)}))
'''


@pytest.mark.parametrize("mode", ["overlay", "copy"])
def test_rootless_step_layer_carries_the_containers_ids(mode, request):
    # As a user with a subuid range: files the step gives to 1000 and 1001 (mode 600, in a 700
    # dir: unreadable to the user on the host) are read in the user namespace, ids as inside.
    step_or_skip()
    rootless = request.getfixturevalue("rootless")
    import json
    import shutil
    import subprocess

    base = rootless.base
    (base / "step_driver.py").write_text(ROOTLESS_DRIVER)
    import importlib.util

    for module in ("zstandard", "isal"):  # the store's compression, for the user's Python
        found = importlib.util.find_spec(module)
        assert found and found.origin
        if not (base / "py" / module).exists():
            shutil.copytree(Path(found.origin).parent, base / "py" / module,
                            ignore=shutil.ignore_patterns("__pycache__"))
    for p in [base / "step_driver.py", *(base / "py").rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    script = ("echo x > /f && chown 1000:1000 /f && chmod 600 /f && mkdir /d && echo y > /d/g && "
              "chown -R 1001:1002 /d && chmod 700 /d && chmod 600 /d/g")
    arg = json.dumps({"tar": str(base / "busybox.tar"), "script": script, "mode": mode})
    done = subprocess.run(["runuser", "-u", rootless.users["ranged"], "--", rootless.python,
                           str(base / "step_driver.py"), arg], capture_output=True, text=True, cwd=base,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(base / "py"),
                               "TMPDIR": "/tmp"})
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["code"] == 0
    assert r["entries"] == [["d", 1001, 1002, "0o700", None], ["d/g", 1001, 1002, "0o600", "y\n"],
                            ["f", 1000, 1000, "0o600", "x\n"]]
    assert r["tmp"] == []


def test_a_deep_image_still_runs_on_overlay(store, image, caplog):
    # More layers than fit overlay's one-page mount options as absolute paths: short links
    # (and the stub layer linked beside the upper dir) keep it on overlayfs, not the copy.
    from tests.imagekit import files_tar, image_from_tars

    deep = image_from_tars(store, [files_tar({f"l{i}": f"{i}\n"}) for i in range(130)])
    with caplog.at_level(logging.DEBUG, logger="buildpy.sandbox"):
        result, out = run(store, image.layers + deep.layers, image.diff_ids + deep.diff_ids,
                          "cat /l0 /l129; ls / | grep -c '^l'")
    assert result.exit_code == 0 and out == "0\n129\n130\n"
    if step.overlay_usable(store.tmp_dir):
        assert "overlayfs over 131 snapshot(s)" in caplog.text


@pytest.mark.parametrize("mode", ["overlay", "copy"])
def test_the_step_sees_the_images_whiteouts_and_opaque_dirs(store, image, mode):
    from tests.imagekit import files_tar, image_from_tars
    from tests.test_sandbox_snapshots import tar_of

    more = image_from_tars(store, [
        files_tar({"opt/a": "a", "opt/b": "b", "etc/motd": "hi"}),
        tar_of([("opt", "dir", None), ("opt/.wh..wh..opq", "opaque", None), ("opt/c", "file", "c"),
                ("etc", "dir", None), ("etc/.wh.motd", "whiteout", None)]),
    ])
    result, out = run(store, image.layers + more.layers, image.diff_ids + more.diff_ids,
                      "ls /opt; test -e /etc/motd || echo no motd", rootfs_mode=mode)
    assert result.exit_code == 0 and result.empty
    assert out == "c\nno motd\n"


def test_privileges_need_the_builds_entitlements(store, image):
    with pytest.raises(step.EntitlementError, match="--allow security.insecure"):
        run(store, image.layers, image.diff_ids, "true", insecure=True)
    with pytest.raises(step.EntitlementError, match="--allow network.host"):
        run(store, image.layers, image.diff_ids, "true", network="host")
    # granted, they run: insecure may mount, which Docker's defaults forbid
    result, _ = run(store, image.layers, image.diff_ids, "mkdir -p /mnt/t && mount -t tmpfs t /mnt/t",
                    insecure=True, allow={"security.insecure"})
    assert result.exit_code == 0
    result, _ = run(store, image.layers, image.diff_ids, "mkdir -p /mnt/t && mount -t tmpfs t /mnt/t")
    assert result.exit_code != 0
    assert run(store, image.layers, image.diff_ids, "true", network="host", allow={"network.host"})[0].exit_code == 0


def test_steps_run_side_by_side_from_threads(store, image):
    # the executor runs independent steps on threads: each gets its own root and its own layer
    import threading

    results: dict[int, tuple] = {}

    def one(i: int) -> None:
        result, out = run(store, image.layers, image.diff_ids, f"echo {i} > /f{i}; sleep 0.2; ls / | grep -c '^f'")
        results[i] = (result.exit_code, out, layer_entries(store, result.layer)[-1][::6] if result.layer else None)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: (0, "1\n", (f"f{i}", f"{i}\n".encode())) for i in range(4)}
