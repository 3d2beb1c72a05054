"""RUN --mount: bind (read-only, rw into a discarded copy, symlinks kept inside their root),
cache (kept, uid/gid/mode, seeded, shared/locked/private), tmpfs, secret (private file, removed,
required, env), ssh; and, through real steps, that nothing of a mount reaches the layer."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from buildpy.cas.store import Store
from buildpy.sandbox import mounts, step
from buildpy.sandbox.mounts import MountError, RunMount
from buildpy.sandbox.spec import Mount, Process
from tests.test_sandbox_snapshots import root_or_skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def resolve(store: Store, *ms: RunMount, **kw):
    if os.geteuid() != 0:  # as the sandbox maps a user without a subuid range: only root, to us
        kw.setdefault("uid_map", [(0, os.geteuid(), 1)])
        kw.setdefault("gid_map", [(0, os.getegid(), 1)])
    return mounts.resolve(list(ms), store=store, **kw)


def test_bind_is_read_only_and_stays_inside_its_root(store, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True)
    (ctx / "etc/passwd").write_text("the context's")
    os.symlink("/etc", ctx / "escape")  # absolute: means the context's /etc, not the host's
    os.symlink("../../..", ctx / "up")
    with resolve(store, RunMount("bind", "/src", "escape/passwd", ctx)) as r:
        assert r.mounts == (Mount("/src", "bind", ctx / "etc/passwd", True),)
        assert r.targets == {"/src"}
    with resolve(store, RunMount("bind", "/src", "up/etc", ctx)) as r:
        assert r.mounts[0].source == ctx / "etc"
    with pytest.raises(MountError, match="not found") as e:
        with resolve(store, RunMount("bind", "/src", "nope", ctx)):
            pass
    assert e.value.user_facing


def test_bind_rw_writes_go_to_a_discarded_copy(store, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / "dir/f").write_text("original")
    with resolve(store, RunMount("bind", "/w", "dir", ctx, readonly=False)) as r:
        m = r.mounts[0]
        assert not m.readonly and m.source != ctx / "dir"
        (m.source / "f").write_text("changed")
        (m.source / "new").write_text("new")
    assert (ctx / "dir/f").read_text() == "original" and not (ctx / "dir/new").exists()
    assert not m.source.exists()


def test_cache_is_kept_and_made_with_uid_gid_mode(store):
    root_or_skip()
    cache = RunMount("cache", "/root/.cache", id="go", uid=1000, gid=1001, mode=0o2750, readonly=False)
    with resolve(store, cache) as r:
        path = r.mounts[0].source
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o2750)
        (path / "built").write_text("artifact")
    with resolve(store, RunMount("cache", "/elsewhere", id="go", readonly=False)) as r:
        assert r.mounts[0].source == path and (path / "built").read_text() == "artifact"
    with resolve(store, RunMount("cache", "/root/.cache", readonly=False)) as r:  # id defaults to target
        assert r.mounts[0].source != path


def test_cache_seeded_from_its_source(store, tmp_path):
    seed = tmp_path / "stage"
    (seed / "opt/cache").mkdir(parents=True)
    (seed / "opt/cache/seed").write_text("seeded")
    with resolve(store, RunMount("cache", "/c", "opt/cache", seed, id="s", readonly=False)) as r:
        assert (r.mounts[0].source / "seed").read_text() == "seeded"


def test_locked_sharing_serialises_steps(store):
    events: list[str] = []
    trying = threading.Event()

    def second() -> None:
        trying.set()
        with resolve(store, RunMount("cache", "/c", id="apt", sharing="locked", readonly=False)):
            events.append("second in")

    with resolve(store, RunMount("cache", "/c", id="apt", sharing="locked", readonly=False)):
        t = threading.Thread(target=second)
        t.start()
        trying.wait()
        t.join(0.5)  # had the lock not held it out, it would be in by now
        events.append("first out")
    t.join()
    assert events == ["first out", "second in"]


def test_shared_users_share_and_private_gets_its_own_when_busy(store):
    shared = RunMount("cache", "/c", id="x", readonly=False)
    private = RunMount("cache", "/c", id="x", sharing="private", readonly=False)
    with resolve(store, shared) as a, resolve(store, shared) as b:
        assert a.mounts[0].source == b.mounts[0].source
        with resolve(store, private) as p, resolve(store, private) as q:
            dirs = {a.mounts[0].source, p.mounts[0].source, q.mounts[0].source}
            assert len(dirs) == 3
    with resolve(store, private) as p:  # nobody else: the cache itself
        assert p.mounts[0].source == a.mounts[0].source


def test_secret_is_a_private_file_removed_after(store):
    root_or_skip()
    secret = RunMount("secret", id="token", uid=1000, gid=1000)
    with resolve(store, secret, secrets={"token": b"s3cr3t"}) as r:
        m = r.mounts[0]
        assert (m.target, m.type, m.readonly) == ("/run/secrets/token", "file", True)
        assert m.source.read_bytes() == b"s3cr3t"
        st = os.lstat(m.source)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o400, 1000, 1000)
        assert stat.S_IMODE(os.lstat(m.source.parent).st_mode) == 0o700
    assert not m.source.exists() and not m.source.parent.exists()
    with resolve(store, RunMount("secret", "/etc/key", id="k", mode=0o440), secrets={"k": b"v"}) as r:
        assert r.mounts[0].target == "/etc/key" and stat.S_IMODE(os.lstat(r.mounts[0].source).st_mode) == 0o440


def test_secret_missing_required_or_as_env(store):
    with pytest.raises(MountError, match="secret nope not found"):
        with resolve(store, RunMount("secret", id="nope", required=True), secrets={}):
            pass
    with resolve(store, RunMount("secret", id="nope"), secrets={}) as r:
        assert r.mounts == () and r.env == ()
    with resolve(store, RunMount("secret", id="API_KEY", env="API_KEY"), secrets={"API_KEY": b"k"}) as r:
        assert r.mounts == () and r.env == ("API_KEY=k",)
    with resolve(store, RunMount("secret", "/k", id="a", env="A"), secrets={"a": b"v"}) as r:
        assert [m.target for m in r.mounts] == ["/k"] and r.env == ("A=v",)


def test_ssh_agent_socket(store, tmp_path):
    sock_path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with resolve(store, RunMount("ssh"), RunMount("ssh", "/tmp/a"), ssh_agents={"default": str(sock_path)}) as r:
            assert [(m.target, m.source) for m in r.mounts] == [
                ("/run/buildkit/ssh_agent.0", sock_path), ("/tmp/a", sock_path)]
            assert r.env == ("SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0",)
    with pytest.raises(MountError, match="SSH agent"):
        with resolve(store, RunMount("ssh", required=True), ssh_agents={}):
            pass
    with resolve(store, RunMount("ssh"), ssh_agents={}) as r:
        assert r.mounts == ()


def test_tmpfs_and_bad_targets(store):
    with resolve(store, RunMount("tmpfs", "/scratch", size=1 << 20)) as r:
        assert r.mounts == (Mount("/scratch", "tmpfs", None, False, ("size=1048576",)),)
    for bad in (RunMount("tmpfs", "relative"), RunMount("tmpfs", "/"), RunMount("tmpfs", ""), RunMount("nfs", "/x")):
        with pytest.raises(MountError):
            with resolve(store, bad):
                pass


# --- through real steps --------------------------------------------------------------------


def step_or_skip() -> None:
    if not (Path(mounts.__file__).parent / "run.py").exists():
        pytest.skip("buildpy/sandbox/run.py (the process side) is not there yet")
    from tests.imagekit import busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    busybox_or_skip()


@pytest.fixture
def image(store):
    step_or_skip()
    from tests.imagekit import busybox_image

    return busybox_image(store)


def sh(store, image, script, **kw):
    out: list[bytes] = []
    result = step.run_step(store, layers=image.layers, diff_ids=image.diff_ids,
                           process=Process(("/bin/sh", "-c", script)), stdout=out.append, **kw)
    return result, b"".join(out).decode()


def test_cache_persists_across_steps_and_stays_out_of_the_layer(store, image):
    cache = RunMount("cache", "/var/cache/app", id="app", readonly=False)
    first, _ = sh(store, image, "echo 1 > /var/cache/app/f", mounts=[cache])
    assert (first.exit_code, first.empty) == (0, True)
    second, out = sh(store, image, "cat /var/cache/app/f; echo 2 >> /var/cache/app/f", mounts=[cache])
    assert out == "1\n" and second.empty
    assert (mounts.cache_root(store) / "app" / "f").read_text() == "1\n2\n"


def test_secret_is_readable_not_in_the_layer_and_gone_after(store, image):
    before = set(os.listdir("/dev/shm"))
    result, out = sh(store, image, "cat /run/secrets/tok; ls -l /run/secrets/tok | cut -c1-10",
                     mounts=[RunMount("secret", id="tok")], secrets={"tok": b"hunter2"})
    assert out == "hunter2-r--------\n"
    assert result.empty  # no /run/secrets stub either
    assert set(os.listdir("/dev/shm")) <= before


def test_bind_rw_writes_are_discarded(store, image, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("original")
    result, out = sh(store, image, "echo changed > /src/f; echo new > /src/new; cat /src/f",
                     mounts=[RunMount("bind", "/src", "", ctx, readonly=False)])
    assert out == "changed\n" and result.empty
    assert sorted(os.listdir(ctx)) == ["f"] and (ctx / "f").read_text() == "original"
    ro, _ = sh(store, image, "echo x > /src/f", mounts=[RunMount("bind", "/src", "", ctx)])
    assert ro.exit_code != 0


def test_tmpfs_contents_are_not_in_the_layer(store, image):
    result, out = sh(store, image, "echo x > /scratch/f; echo kept > /kept; cat /scratch/f",
                     mounts=[RunMount("tmpfs", "/scratch")])
    assert out == "x\n" and result.layer is not None
    from tests.test_sandbox_step import layer_entries

    assert [e[0] for e in layer_entries(store, result.layer)] == ["kept"]
