"""An image's VOLUMEs: each path the image declares (and no -v covers) gets a new anonymous
volume at create, filled first with what the image has there (docker's copy-up, whiteouts
honoured); `rm -v`, `run --rm` and `buildpy run --rm` remove it; `docker system df` reports
images, containers and volumes. The real docker CLI against a real `buildpy serve`, and the
`buildpy run` CLI, in the real sandbox."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from buildpy.containers import state
from tests.apiserver import BUILDPY, Server, call, docker, needs_docker, serving
from tests.imagekit import busybox_or_skip, busybox_tar, image_from_tars

pytestmark = needs_docker

IMAGE = "docker.io/library/seeded:latest"
HEX64 = re.compile(r"[0-9a-f]{64}")


def _layer(entries: list[tuple[str, str, object, int, int]]) -> bytes:
    """A layer tar of (name, kind "dir" | "file" | "link", data or link target, mode, uid)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data, mode, uid in entries:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.uid, ti.gid = mode, uid, uid
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "link":
                ti.type = tarfile.SYMTYPE
                ti.linkname = str(data)
                t.addfile(ti)
            else:
                raw = str(data).encode()
                ti.size = len(raw)
                t.addfile(ti, io.BytesIO(raw))
    return buf.getvalue()


def seeded_image(store: Store) -> None:
    """busybox, then a layer with /data (the VOLUME), then one that whites out part of it."""
    lower = _layer([("data", "dir", None, 0o755, 0), ("data/old", "file", "hidden\n", 0o644, 0),
                    ("data/sub", "dir", None, 0o755, 0), ("data/sub/gone", "file", "hidden\n", 0o644, 0)])
    upper = _layer([("data", "dir", None, 0o750, 1000), ("data/seed", "file", "seed\n", 0o644, 0),
                    ("data/tool", "file", "#!/bin/sh\n", 0o755, 1000), ("data/link", "link", "seed", 0o777, 0),
                    ("data/.wh.old", "file", "", 0o644, 0),
                    ("data/sub", "dir", None, 0o755, 0), ("data/sub/.wh..wh..opq", "file", "", 0o644, 0),
                    ("data/sub/kept", "file", "kept\n", 0o600, 0)])
    image_from_tars(store, [busybox_tar(), lower, upper], IMAGE, config={"Cmd": ["sh"], "Volumes": {"/data": {}}})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    busybox_or_skip()
    with serving(tmp_path_factory.mktemp("api-volumes-image")) as srv:
        seeded_image(Store(srv.root))
        yield srv


def _volumes(server: Server) -> set[str]:
    return {p.name for p in (server.root / "volumes").iterdir()} if (server.root / "volumes").is_dir() else set()


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


# what a container sees in its image's volume: the seed, with overlay's rules, owners and modes,
# and (last) the mount's line of mountinfo, which names the volume's dir
LOOK = ("cat /data/seed; ls -a /data /data/sub; readlink /data/link; stat -c '%a %u %n' /data /data/tool "
        "/data/sub/kept; grep ' /data ' /proc/self/mountinfo")


def _check_look(out: str) -> str:
    """Asserts what LOOK printed; returns the /data mount's line of mountinfo."""
    lines = out.splitlines()
    assert lines[0] == "seed", out
    # `ls -a /data /data/sub` heads each listing with its dir; the whiteouts hide old and gone
    stats = lines.index("750 1000 /data")
    listing = " ".join(lines[1:stats - 1]).split()
    assert listing == ["/data:", ".", "..", "link", "seed", "sub", "tool", "/data/sub:", ".", "..", "kept"], out
    assert lines[stats - 1:stats + 3] == ["seed", "750 1000 /data", "755 1000 /data/tool", "600 0 /data/sub/kept"], out
    mount = lines[-1]
    assert " /data " in mount, out
    return mount


def _anonymous_in(mount: str) -> str:
    found = re.search(r"/volumes/([0-9a-f]{64})/_data ", mount)
    assert found, mount
    return found.group(1)


def test_run_rm_gets_the_seed_and_removes_its_volume(server: Server, tmp_path: Path) -> None:
    before = _volumes(server)
    r = _ok(docker(server, tmp_path, "run", "--rm", "seeded", "sh", "-c", LOOK))
    name = _anonymous_in(_check_look(r.stdout))
    assert name not in before
    assert _volumes(server) == before  # the anonymous volume went with the container
    assert not (server.root / "volumes" / name).exists()
    assert _ok(docker(server, tmp_path, "run", "--rm", "seeded", "cat", "/data/seed")).stdout == "seed\n"


def test_detached_container_writes_into_its_anonymous_volume(server: Server, tmp_path: Path) -> None:
    _ok(docker(server, tmp_path, "run", "-d", "--name", "vw", "seeded", "sh", "-c", "echo written > /data/new"))
    assert _ok(docker(server, tmp_path, "wait", "vw")).stdout.strip() == "0"
    info = json.loads(_ok(docker(server, tmp_path, "inspect", "vw")).stdout)[0]
    mounts = [m for m in info["Mounts"] if m["Destination"] == "/data"]
    assert len(mounts) == 1 and mounts[0]["Type"] == "volume" and HEX64.fullmatch(mounts[0]["Name"]), info["Mounts"]
    name = mounts[0]["Name"]
    data = server.root / "volumes" / name / "_data"
    assert (data / "new").read_text() == "written\n" and (data / "seed").read_text() == "seed\n"
    upper = state.directory(Store(server.root), state.find(Store(server.root), "vw")) / "upper"
    assert upper.is_dir() and not (upper / "data" / "new").exists()
    assert name in _ok(docker(server, tmp_path, "volume", "ls", "-q")).stdout.split()
    ls = _ok(subprocess.run([*BUILDPY, "--root", str(server.root), "volume", "ls"], capture_output=True, text=True))
    assert name in ls.stdout  # `buildpy volume ls` lists anonymous volumes too
    _ok(docker(server, tmp_path, "rm", "-v", "vw"))
    assert not (server.root / "volumes" / name).exists()


def test_rm_without_v_keeps_the_anonymous_volume(server: Server, tmp_path: Path) -> None:
    _ok(docker(server, tmp_path, "create", "--name", "vk", "seeded", "true"))
    name = json.loads(_ok(docker(server, tmp_path, "inspect", "vk")).stdout)[0]["Mounts"][0]["Name"]
    assert (server.root / "volumes" / name / "_data" / "seed").read_text() == "seed\n"  # filled at create
    _ok(docker(server, tmp_path, "rm", "vk"))
    assert (server.root / "volumes" / name / "_data" / "seed").is_file()
    _ok(docker(server, tmp_path, "volume", "rm", name))


def test_a_given_volume_covers_the_image_path(server: Server, tmp_path: Path) -> None:
    before = _volumes(server)
    r = _ok(docker(server, tmp_path, "run", "--rm", "-v", "fresh:/data", "seeded", "sh", "-c", LOOK))
    assert "/volumes/fresh/_data " in _check_look(r.stdout)
    assert _volumes(server) - before == {"fresh"}  # no anonymous volume beside it; the named one stays
    assert (server.root / "volumes" / "fresh" / "_data" / "seed").read_text() == "seed\n"
    _ok(docker(server, tmp_path, "volume", "create", "full"))
    _ok(docker(server, tmp_path, "run", "--rm", "-v", "full:/other", "busybox", "sh", "-c", "echo mine > /other/own"))
    r = _ok(docker(server, tmp_path, "run", "--rm", "-v", "full:/data", "seeded", "ls", "/data"))
    assert r.stdout.split() == ["own"]  # a volume with content keeps it: no copy-up
    host = tmp_path / "host"
    host.mkdir()
    r = _ok(docker(server, tmp_path, "run", "--rm", "-v", f"{host}:/data", "seeded", "ls", "-a", "/data"))
    assert r.stdout.split() == [".", ".."] and _volumes(server) - before == {"fresh", "full"}  # binds: no copy-up


def test_system_df(server: Server, tmp_path: Path) -> None:
    _ok(docker(server, tmp_path, "volume", "create", "dfvol"))
    _ok(docker(server, tmp_path, "run", "--name", "dfuser", "-v", "dfvol:/v", "seeded", "sh", "-c",
               "printf 12345 > /v/five; printf 1234567 > /seven"))
    try:
        df = call(server.sock, "GET", "/v1.41/system/df")
        assert df.status == 200, df.body
        usage = df.json()
        assert set(usage) == {"LayersSize", "Images", "Containers", "Volumes", "BuildCache"}
        assert usage["BuildCache"] == []
        image = next(i for i in usage["Images"] if "seeded:latest" in i["RepoTags"])
        assert image["Size"] > 0 and image["Containers"] >= 1
        assert usage["LayersSize"] >= image["Size"] - 2000  # every layer once; Size adds the config
        busybox = next(i for i in usage["Images"] if "busybox:latest" in i["RepoTags"])
        from buildpy.cas.reference import resolve

        mine = resolve(Store(server.root), "busybox")[1].layers
        theirs = {d.digest for d in resolve(Store(server.root), "seeded")[1].layers}
        assert busybox["SharedSize"] == sum(d.size for d in mine if d.digest in theirs)
        ctr = next(c for c in usage["Containers"] if c["Names"] == ["/dfuser"])
        assert ctr["SizeRw"] == 7 and ctr["SizeRootFs"] == 7 + image["Size"]
        assert any(m["Type"] == "volume" and m["Name"] == "dfvol" for m in ctr["Mounts"])
        vol = next(v for v in usage["Volumes"] if v["Name"] == "dfvol")
        assert vol["UsageData"] == {"Size": 5, "RefCount": 1}
        r = _ok(docker(server, tmp_path, "system", "df"))
        assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == ["Images", "Containers", "Local", "Build"]
        r = _ok(docker(server, tmp_path, "system", "df", "-v"))
        assert re.search(r"^seeded\s+latest\s", r.stdout, re.M), r.stdout
        assert re.search(r"^dfvol\s+1\s+5B\s*$", r.stdout, re.M), r.stdout
        assert re.search(r"dfuser\s*$", r.stdout, re.M), r.stdout
    finally:
        _ok(docker(server, tmp_path, "rm", "-v", "dfuser"))
        _ok(docker(server, tmp_path, "volume", "rm", "dfvol"))


# `buildpy run`, the same shared code: its own store


def _buildpy(store: Store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BUILDPY, "--root", str(store.root), *args], capture_output=True, text=True, timeout=120)


def test_buildpy_run_gets_the_seed(tmp_path: Path) -> None:
    busybox_or_skip()
    store = Store(tmp_path / "store")
    seeded_image(store)
    r = _ok(_buildpy(store, "run", "--rm", "seeded", "sh", "-c", LOOK))
    name = _anonymous_in(_check_look(r.stdout))
    assert not (store.root / "volumes" / name).exists()  # run --rm removed it
    r = _ok(_buildpy(store, "run", "--name", "kept", "seeded", "sh", "-c", "echo more >> /data/seed"))
    listed = _ok(_buildpy(store, "volume", "ls")).stdout
    names = HEX64.findall(listed)
    assert len(names) == 1, listed
    assert (store.root / "volumes" / names[0] / "_data" / "seed").read_text() == "seed\nmore\n"
    r = _ok(_buildpy(store, "run", "--rm", "-v", "mine:/data", "seeded", "cat", "/data/seed"))
    assert r.stdout == "seed\n"
