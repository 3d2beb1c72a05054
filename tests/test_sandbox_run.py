"""The sandbox's behaviour: exit statuses, signals, env, cwd, USER, output streaming, stdin,
timeouts and cancellation (nothing left running), mounts, the files Docker supplies, and that the
overlay's upper dir receives exactly the step's change (no mount points)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildpy.sandbox import forkserver, run as run_module
from buildpy.sandbox.run import SandboxError, SandboxTimeout, run
from buildpy.sandbox.spec import Mount
from tests.sandboxkit import Layout, marker, other_ids_or_skip, processes_with, run_sh, sandbox_or_skip


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    sandbox_or_skip()
    return Layout(tmp_path_factory.mktemp("sandbox"))


@pytest.fixture(params=["forkserver", "direct"])
def start_mode(request: pytest.FixtureRequest):
    """Both ways of starting the child: through the fork server and as a fresh interpreter."""
    saved = run_module.use_forkserver
    run_module.use_forkserver = request.param == "forkserver"
    yield request.param
    run_module.use_forkserver = saved


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its mode and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_mtime_ns)
    return out


def upper_paths(spec) -> set[str]:
    return set(tree(spec.overlay.upper))


# exit statuses and signals


@pytest.mark.parametrize("script, expected", [("true", 0), ("exit 3", 3), ("false", 1), ("exit 255", 255)])
def test_exit_status(layout, start_mode, script, expected):
    assert run(layout.sh(script)) == expected


@pytest.mark.parametrize("sig, expected", [("TERM", 143), ("KILL", 137), ("INT", 130)])
def test_signal_death_is_128_plus_signal(layout, sig, expected):
    # `kill` of its own shell: the step dies of the signal, as `docker run` reports it.
    assert run(layout.sh(f"kill -{sig} $$; sleep 5")) == expected


def test_missing_command_is_a_user_error(layout):
    with pytest.raises(SandboxError) as e:
        run(layout.spec("/no/such/binary"))
    assert e.value.user_facing
    assert "executable file not found" in str(e.value) and "\n" not in str(e.value)


def test_command_found_through_path(layout):
    code, out, _ = run_sh(layout.spec("echo", "via", "PATH"))
    assert (code, out) == (0, "via PATH\n")


# environment, working directory, user


def test_env_in_order_with_defaults(layout):
    spec = layout.sh('echo "$FOO|$BAR|$HOME|$PATH"', env=("FOO=one", "BAR=a=b", "FOO=two"))
    code, out, _ = run_sh(spec)
    assert code == 0
    assert out == "two|a=b|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"


def test_env_path_and_home_given_win(layout):
    code, out, _ = run_sh(layout.sh('echo "$HOME $PATH"', env=("HOME=/h", "PATH=/bin")))
    assert (code, out) == (0, "/h /bin\n")


def test_cwd_created_owned_by_root_in_the_layer(layout):
    other_ids_or_skip()
    spec = layout.sh("pwd; stat -c '%u:%g %a' .", cwd="/srv/app/work", user="app")
    code, out, _ = run_sh(spec)
    assert code == 0
    assert out == "/srv/app/work\n0:0 755\n"
    # the working directory is the step's change (as with runc)
    assert {"srv", "srv/app", "srv/app/work"} <= upper_paths(spec)


def test_cwd_under_a_file_is_a_user_error(layout):
    with pytest.raises(SandboxError) as e:
        run(layout.sh("true", cwd="/etc/passwd/sub"))
    assert e.value.user_facing and "working directory" in str(e.value)


def status_ids(out: str) -> dict[str, str]:
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: " ".join(v.split()) for k, v in fields.items() if k in ("Uid", "Gid", "Groups")}


@pytest.mark.parametrize("user, uid, gid, groups", [
    ("", "0", "0", ""),
    ("app", "1000", "1000", "50"),  # supplementary groups from /etc/group's member lists
    ("1000", "1000", "1000", "50"),  # a uid in passwd is the user
    ("app:staff", "1000", "50", ""),  # an explicit group: no supplementary groups (runc)
    ("1000:50", "1000", "50", ""),
    ("4242", "4242", "0", ""),  # a uid not in passwd: gid 0
    ("4242:4243", "4242", "4243", ""),
    ("nobody", "65534", "65534", ""),
])
def test_user(layout, user, uid, gid, groups):
    if user:
        other_ids_or_skip()
    code, out, _ = run_sh(layout.sh("grep -E '^(Uid|Gid|Groups)' /proc/self/status; id -u", user=user))
    assert code == 0
    ids = status_ids(out)
    assert ids["Uid"] == " ".join([uid] * 4)
    assert ids["Gid"] == " ".join([gid] * 4)
    assert ids["Groups"] == groups
    assert out.splitlines()[-1] == uid


@pytest.mark.parametrize("user, message", [("nosuch", "unable to find user nosuch"),
                                           ("app:nogroup2", "unable to find group nogroup2")])
def test_unknown_user_is_a_user_error(layout, user, message):
    with pytest.raises(SandboxError) as e:
        run(layout.sh("true", user=user))
    assert e.value.user_facing and message in str(e.value) and "\n" not in str(e.value)


def test_non_root_user_has_no_capabilities(layout):
    other_ids_or_skip()
    code, out, _ = run_sh(layout.sh("grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status", user="app"))
    assert code == 0
    assert out.split() == ["CapPrm:", "0000000000000000", "CapEff:", "0000000000000000",
                           "CapBnd:", "00000000a80425fb"]


# output and input


def test_stdout_and_stderr_line_by_line(layout, start_mode):
    out: list[bytes] = []
    err: list[bytes] = []
    code = run(layout.sh("echo one; echo two >&2; printf 'three\\nfour'; printf 'x' >&2"),
               stdout=out.append, stderr=err.append)
    assert code == 0
    assert out == [b"one\n", b"three\n", b"four"]
    assert err == [b"two\n", b"x"]


def test_stdout_streams_while_the_step_runs(layout, tmp_path):
    """The step waits for a file the callback creates on seeing its first line: it finishes only
    if lines arrive while it runs (the timeout turns a buffered implementation into a failure)."""
    sync = tmp_path / "sync"
    sync.mkdir()
    spec = layout.sh("echo ready; while [ ! -e /sync/go ]; do sleep 0.01; done; echo done",
                     mounts=(Mount("/sync", source=sync, readonly=True),), timeout=30)

    seen: list[bytes] = []

    def on_line(line: bytes) -> None:
        seen.append(line)
        if line == b"ready\n":
            (sync / "go").touch()

    assert run(spec, stdout=on_line) == 0
    assert seen == [b"ready\n", b"done\n"]


def test_without_callbacks_the_step_writes_to_our_fds(layout, start_mode, capfd):
    assert run(layout.sh("echo to-stdout; echo to-stderr >&2")) == 0
    captured = capfd.readouterr()
    assert "to-stdout" in captured.out and "to-stderr" in captured.err


def test_stdin(layout, tmp_path):
    data = tmp_path / "input"
    data.write_bytes(b"fed\nto stdin\n")
    with open(data, "rb") as f:
        code, out, _ = run_sh(layout.spec("cat"), stdin=f)
    assert (code, out) == (0, "fed\nto stdin\n")


def test_stdin_defaults_to_dev_null(layout):
    code, out, _ = run_sh(layout.sh("cat; echo eof"))
    assert (code, out) == (0, "eof\n")


# nothing left behind


def test_background_process_does_not_outlive_the_step(layout, start_mode):
    mark = marker()
    code, out, _ = run_sh(layout.sh(f"sleep {mark} & echo started"))
    assert (code, out) == (0, "started\n")
    assert processes_with(mark) == []


def test_timeout_kills_every_process(layout, start_mode):
    mark = marker()
    with pytest.raises(SandboxTimeout) as e:
        run(layout.sh(f"sleep {mark} & sleep {mark}; echo never", timeout=0.5))
    assert e.value.user_facing
    assert processes_with(mark) == []


def test_interrupt_kills_every_process(layout, start_mode):
    """Ctrl-C in the parent (KeyboardInterrupt, here raised from the output callback once the step
    has started its background processes) cancels the step and leaves nothing running."""
    mark = marker()

    def on_line(line: bytes) -> None:
        assert processes_with(mark), "the step's processes run"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(layout.sh(f"sleep {mark} & sleep {mark} & echo started; wait"), stdout=on_line)
    assert processes_with(mark) == []


def test_fork_server_restarts_when_it_died(layout):
    saved = run_module.use_forkserver
    run_module.use_forkserver = True
    try:
        assert run(layout.sh("true")) == 0
        server = forkserver._server
        assert server is not None
        server.popen.kill()
        server.popen.wait()
        assert run(layout.sh("exit 7")) == 7
        assert forkserver._server is not server
    finally:
        run_module.use_forkserver = saved


# the filesystem: layer contents, mounts, Docker's files


def test_upper_dir_holds_exactly_the_change(layout, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    spec = layout.sh("echo hi > /tmp/x; rm /etc/group; ls /etc; cat /etc/hostname",
                     mounts=(Mount("/mnt/deep/data", source=data), Mount("/run/cache", type="tmpfs"),
                             Mount("/run/secrets/token", type="file", source=data / "token")),
                     hostname="stepbox")
    (data / "token").write_text("s3cret")
    code, out, _ = run_sh(spec)
    assert code == 0
    assert out.split() == ["hostname", "hosts", "passwd", "resolv.conf", "stepbox"]
    # the step's files, and a whiteout for the deleted one; no mount point, no /etc/hosts
    assert upper_paths(spec) == {"tmp", "tmp/x", "etc", "etc/group"}
    assert os.stat(spec.overlay.upper / "etc/group").st_rdev == 0


def test_mount_points_keep_the_image_metadata(layout):
    """/etc, which gets /etc/hosts as a mount point, looks inside as it does in the image."""
    st = os.stat(layout.lower / "etc")
    code, out, _ = run_sh(layout.sh("stat -c '%a %u %g %Y' /etc"))
    assert code == 0
    assert out.split() == [f"{st.st_mode & 0o7777:o}", str(st.st_uid), str(st.st_gid), str(int(st.st_mtime))]


def test_without_overlay_the_rootfs_gets_its_mount_points_back(tmp_path):
    sandbox_or_skip()
    lay = Layout(tmp_path)
    before = tree(lay.lower)
    data = tmp_path / "data"
    data.mkdir()
    spec = lay.sh("echo new > /tmp/made; test -d /mnt/a/b && test -f /etc/hosts",
                  overlay=False, mounts=(Mount("/mnt/a/b", source=data),))
    assert run(spec) == 0
    after = tree(lay.lower)
    assert set(after) - set(before) == {"tmp/made"}
    assert {k: v for k, v in after.items() if k not in ("tmp", "tmp/made")} == \
           {k: v for k, v in before.items() if k != "tmp"}


def test_bind_mounts_read_only_and_read_write(layout, tmp_path):
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "in").write_text("host data\n")
    spec = layout.sh("cat /ro/in; touch /ro/new && echo ro-writable; echo written > /rw/out",
                     mounts=(Mount("/ro", source=ro), Mount("/rw", source=rw, readonly=False)))
    code, out, err = run_sh(spec)
    assert code == 0
    assert out == "host data\n"
    assert "Read-only file system" in err
    assert not (ro / "new").exists()
    assert (rw / "out").read_text() == "written\n"
    assert upper_paths(spec) == set()


def test_tmpfs_mount_options(layout):
    spec = layout.sh("stat -c %a /scratch; echo x > /scratch/f && cat /scratch/f",
                     mounts=(Mount("/scratch", type="tmpfs", options=("size=1m", "mode=1777")),))
    code, out, _ = run_sh(spec)
    assert (code, out) == (0, "1777\nx\n")
    assert upper_paths(spec) == set()


def test_missing_bind_source_is_an_error(layout, tmp_path):
    with pytest.raises(SandboxError) as e:
        run(layout.sh("true", mounts=(Mount("/x", source=tmp_path / "absent"),)))
    assert "absent" in str(e.value)


def test_hosts_hostname_and_extra_hosts(layout):
    spec = layout.sh("hostname; cat /etc/hostname; cat /etc/hosts",
                     hostname="h1", extra_hosts=(("db", "10.0.0.5"),))
    code, out, _ = run_sh(spec)
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == ["h1", "h1"]
    assert "127.0.0.1\tlocalhost h1" in lines and "10.0.0.5\tdb" in lines


def test_docker_files_are_read_only_and_can_be_replaced(layout, tmp_path):
    mine = tmp_path / "resolv"
    mine.write_text("nameserver 192.0.2.1\n")
    spec = layout.sh("cat /etc/resolv.conf; echo x >> /etc/hosts",
                     mounts=(Mount("/etc/resolv.conf", type="file", source=mine),))
    code, out, err = run_sh(spec)
    assert code != 0 and "Read-only file system" in err
    assert out == "nameserver 192.0.2.1\n"


@pytest.mark.parametrize("host, private, expected", [
    ("nameserver 127.0.0.53\noptions edns0\n", True, "options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
    ("nameserver 127.0.0.53\n", False, "nameserver 127.0.0.53\n"),
    ("nameserver 10.1.1.1\nnameserver ::1\n", True, "nameserver 10.1.1.1\n"),
    ("search example.com\nnameserver 1.1.1.1\n", True, "search example.com\nnameserver 1.1.1.1\n"),
])
def test_resolv_conf_as_docker(host, private, expected):
    from buildpy.sandbox.run import resolv_conf

    assert resolv_conf(host, private) == expected


def test_dev_is_minimal(layout):
    code, out, _ = run_sh(layout.sh("ls /dev; echo x > /dev/null; head -c 4 /dev/zero | wc -c; "
                                    "readlink /dev/ptmx; readlink /dev/fd; test -c /dev/pts/ptmx"))
    assert code == 0
    lines = out.split()
    assert lines[:15] == ["fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                          "stdout", "tty", "urandom", "zero", "4"]
    assert lines[15:] == ["pts/ptmx", "/proc/self/fd"]


@pytest.mark.parametrize("network", ["bridge", "nat", ""])
def test_bad_network_option_is_a_user_error(layout, network):
    with pytest.raises(SandboxError) as e:
        run(layout.sh("true", network=network))
    assert e.value.user_facing and "network" in str(e.value)


# pure parts: resolving mount points in a layer stack, USER, id maps


@pytest.fixture
def stack(tmp_path):
    """Two layers: `bottom` an image, `top` deleting and replacing parts of it."""
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    for d in ("etc", "run", "deleted", "opq", "usr/bin", "var"):
        (bottom / d).mkdir(parents=True)
    (bottom / "etc/hosts").write_text("x")
    (bottom / "deleted/x").write_text("x")
    (bottom / "opq/a").write_text("x")
    os.symlink("../run", bottom / "var/run")
    os.symlink("loop2", bottom / "loop1")
    os.symlink("loop1", bottom / "loop2")
    top.mkdir()
    (top / "opq").mkdir()
    (top / "opq/b").write_text("x")
    try:
        os.setxattr(top / "opq", "user.overlay.opaque", b"y")
    except OSError:
        pytest.skip("this filesystem takes no user.* xattrs")
    try:
        os.mknod(top / "deleted", 0o600 | 0o020000, 0)  # a whiteout: character device 0:0
    except PermissionError:
        pytest.skip("cannot make a whiteout here")
    os.symlink("/usr/bin", top / "bin")
    return [str(top), str(bottom)]


@pytest.mark.parametrize("target, existing, missing", [
    ("/etc/hosts", "/etc/hosts", []),
    ("/etc/resolv.conf", "/etc", ["resolv.conf"]),
    ("/var/run/secrets/x", "/run", ["secrets", "x"]),  # through a relative symlink
    ("/bin/sh", "/usr/bin", ["sh"]),  # an absolute symlink stays inside the stack
    ("/deleted/x", "/", ["deleted", "x"]),  # a whiteout hides the dir below
    ("/opq/a", "/opq", ["a"]),  # an opaque dir hides what is below it
    ("/opq/b", "/opq/b", []),
    ("/../../../etc//./hosts", "/etc/hosts", []),  # '..' stops at the root
])
def test_resolve_in_a_layer_stack(stack, target, existing, missing):
    from buildpy.sandbox.rootfs import resolve

    where = resolve(stack, target)
    assert (where.existing, where.missing) == (existing, missing)
    # the parents' metadata comes from their topmost copy
    comps = [c for c in existing.split("/") if c]
    assert len(where.sources) == len(comps)
    for comp, source in zip(comps, where.sources):
        assert os.path.basename(source) == comp


@pytest.mark.parametrize("target, message", [("/etc/hosts/sub", "not a directory"),
                                             ("/loop1/x", "too many levels")])
def test_resolve_errors(stack, target, message):
    from buildpy.sandbox.rootfs import MountError, resolve

    with pytest.raises(MountError) as e:
        resolve(stack, target)
    assert message in str(e.value) and e.value.user_facing


def test_resolve_without_overlay_has_no_whiteouts(stack):
    from buildpy.sandbox.rootfs import resolve

    # in a plain directory a 0:0 device is a device; as an overlay layer, a whiteout
    assert resolve(stack[:1], "/deleted", overlay=False).existing == "/deleted"
    assert resolve(stack[:1], "/deleted").missing == ["deleted"]


def test_opaque_layer_root_hides_the_layers_below(stack):
    from buildpy.sandbox.rootfs import resolve

    os.setxattr(stack[0], "user.overlay.opaque", b"y")
    assert resolve(stack, "/etc/hosts").missing == ["etc", "hosts"]


PASSWD = "root:x:0:0:root:/root:/bin/sh\nbroken line\napp:x:1000:1000::/home/app:/bin/sh\nbad:x:uid:1:::\n"
GROUP = "root:x:0:\nstaff:x:50:app,other\nwheel:x:10:app\napp:x:1000:\n"


@pytest.mark.parametrize("user, expected", [
    ("", (0, 0, (), "/root")),
    ("app", (1000, 1000, (50, 10), "/home/app")),
    ("1000:wheel", (1000, 10, (), "/home/app")),
    ("7", (7, 0, (), "/")),
])
def test_users_resolve(user, expected):
    from buildpy.sandbox.users import resolve

    u = resolve(user, PASSWD, GROUP)
    assert (u.uid, u.gid, u.groups, u.home) == expected


@pytest.mark.parametrize("user", ["bad", "nosuch", "app:nosuch", "4294967296"])
def test_users_resolve_errors(user):
    from buildpy.sandbox.users import UserError, resolve

    with pytest.raises(UserError):
        resolve(user, PASSWD, GROUP)


def test_users_without_passwd_file():
    from buildpy.sandbox.users import UserError, resolve

    assert resolve("5:6", None, None).uid == 5
    with pytest.raises(UserError):
        resolve("app", None, None)


def test_users_read_in_root_stays_inside(tmp_path):
    from buildpy.sandbox.users import read_in_root

    outside = tmp_path / "outside"
    outside.write_text("secret")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink(str(outside), root / "etc/passwd")  # absolute: resolved inside the root
    os.symlink("../../../../../../outside", root / "etc/group")
    assert read_in_root(str(root), "etc/passwd") is None
    assert read_in_root(str(root), "etc/group") is None
    (root / "outside").write_text("inside")
    assert read_in_root(str(root), "etc/group") == "inside"
    inner = root / str(outside).lstrip("/")
    inner.parent.mkdir(parents=True)
    inner.write_text("inside too")
    assert read_in_root(str(root), "etc/passwd") == "inside too"


def test_idmap_ranges(tmp_path):
    from buildpy.sandbox.idmap import IdMaps, IdRange, subid_range

    sub = tmp_path / "subuid"
    sub.write_text("other:100000:65536\n1001:200000:0\nme:300000:100000\nme:500000:65536\n")
    assert subid_range(str(sub), "me", 1001) == (300000, 100000)
    assert subid_range(str(sub), "nobody", 4) is None
    maps = IdMaps("helper", (IdRange(0, 1001, 1), IdRange(1, 300000, 65535)), (IdRange(0, 1001, 1),))
    assert maps.map_text("uid") == "0 1001 1\n1 300000 65535\n"
    assert maps.to_container(301000) == 1001 and maps.to_container(1001) == 0
    assert maps.to_container(5) is None and maps.to_host(1000) == 300999
    assert maps.to_host(5, "gid") is None
