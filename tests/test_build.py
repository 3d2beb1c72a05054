"""`buildpy build` end to end through the CLI's entry point: the cache (a rebuild runs nothing;
a changed file reruns its COPY and what follows, not what precedes; an ignored file reruns
nothing), the reasons given for each miss, reproducible digests, parallel stages, failures,
outputs and flags."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from buildpy.cli import main


@pytest.fixture
def store(tmp_path: Path) -> Store:
    from tests.imagekit import busybox_image, busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    busybox_or_skip()
    s = Store(tmp_path / "store")
    busybox_image(s)
    return s


def build(store: Store, context: Path, *extra: str, capsys=None) -> tuple[int, str]:
    """Run `buildpy build --progress plain`; returns (status, stderr)."""
    rc = main(["--root", str(store.root), "build", "--progress", "plain", *extra, str(context)])
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def image_files(store: Store, name: str) -> dict[str, tuple[str, int, bytes]]:
    """The image's merged tree: path → (type, mode, content or link target)."""
    from buildpy.cas.compress import decompress_reader
    from buildpy.cas.media import layer_compression

    _n, image = resolve(store, name)
    tree: dict[str, tuple[str, int, bytes]] = {}
    for layer in image.layers:
        with store.open_blob(layer.digest) as f, decompress_reader(f, layer_compression(layer.media_type)) as r:
            with tarfile.open(fileobj=r, mode="r|") as t:
                for ti in t:
                    name_ = ti.name.rstrip("/")
                    base = os.path.basename(name_)
                    if base.startswith(".wh."):
                        gone = os.path.join(os.path.dirname(name_), base[4:])
                        for k in [k for k in tree if k == gone or k.startswith(gone + "/")]:
                            del tree[k]
                        continue
                    if ti.isdir():
                        tree[name_] = ("dir", ti.mode, b"")
                    elif ti.issym():
                        tree[name_] = ("symlink", ti.mode, ti.linkname.encode())
                    elif ti.isfile():
                        data = t.extractfile(ti).read()  # type: ignore[union-attr]
                        tree[name_] = ("file", ti.mode, data)
                    else:
                        tree[name_] = ("other", ti.mode, b"")
    return tree


def lines_with(err: str, word: str) -> list[str]:
    return [line for line in err.splitlines() if word in line]


APP = """\
FROM busybox
RUN echo one > /one
COPY . /app
RUN ls /app > /listing
"""


def test_rebuild_with_nothing_changed_runs_no_step(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": APP, "a.txt": "a", "src/b.txt": "b"})
    rc, err = build(store, ctx, "-t", "app:1", capsys=capsys)
    assert rc == 0, err
    assert len(lines_with(err, "DONE")) == 3
    first = resolve(store, "app:1")[1].digest
    rc, err = build(store, ctx, "-t", "app:1", capsys=capsys)
    assert rc == 0, err
    assert lines_with(err, "DONE") == []
    assert len(lines_with(err, "CACHED")) == 3
    assert resolve(store, "app:1")[1].digest == first  # a fully cached rebuild is the same image
    tree = image_files(store, "app:1")
    assert tree["app/a.txt"][2] == b"a"
    assert tree["app/src/b.txt"][2] == b"b"
    assert b"a.txt" in tree["listing"][2]


def test_changed_file_reruns_its_copy_and_what_follows_and_says_why(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": APP, "a.txt": "a", "src/b.txt": "b"})
    assert build(store, ctx, "-t", "app:1", capsys=capsys)[0] == 0
    (ctx / "src/b.txt").write_text("bee")
    rc, err = build(store, ctx, "-t", "app:1", capsys=capsys)
    assert rc == 0, err
    assert len(lines_with(err, "CACHED")) == 1  # RUN echo one
    assert len(lines_with(err, "DONE")) == 2
    assert any("1 file changed: src/b.txt" in line for line in lines_with(err, "runs:")), err
    assert any("parent changed" in line for line in lines_with(err, "runs:")), err
    assert image_files(store, "app:1")["app/src/b.txt"][2] == b"bee"


def test_touching_a_file_without_changing_it_reruns_nothing(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": APP, "a.txt": "a"})
    assert build(store, ctx, capsys=capsys)[0] == 0
    os.utime(ctx / "a.txt", (1, 1))
    rc, err = build(store, ctx, capsys=capsys)
    assert rc == 0 and lines_with(err, "DONE") == [], err


def test_ignored_file_reruns_nothing(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": APP, "a.txt": "a", ".dockerignore": "*.log\n", "x.log": "1"})
    assert build(store, ctx, "-t", "app:1", capsys=capsys)[0] == 0
    (ctx / "x.log").write_text("2")
    (ctx / "y.log").write_text("new")
    rc, err = build(store, ctx, "-t", "app:1", capsys=capsys)
    assert rc == 0 and lines_with(err, "DONE") == [], err
    assert "app/x.log" not in image_files(store, "app:1")


def test_build_arg_change_is_explained(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nARG V=1\nRUN echo $V > /v\n"})
    assert build(store, ctx, "-t", "v", capsys=capsys)[0] == 0
    rc, err = build(store, ctx, "-t", "v", "--build-arg", "V=2", capsys=capsys)
    assert rc == 0
    assert any("build-arg V changed" in line for line in lines_with(err, "runs:")), err
    assert image_files(store, "v")["v"][2] == b"2\n"


def test_no_cache_runs_everything(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": APP, "a.txt": "a"})
    assert build(store, ctx, capsys=capsys)[0] == 0
    rc, err = build(store, ctx, "--no-cache", capsys=capsys)
    assert rc == 0 and len(lines_with(err, "DONE")) == 3 and lines_with(err, "CACHED") == []


def test_no_cache_filter_reruns_only_that_stage(store, tmp_path, capsys):
    df = "FROM busybox AS a\nRUN echo a > /a\nFROM busybox AS b\nCOPY --from=a /a /a\nRUN cat /a > /b\n"
    ctx = write(tmp_path / "ctx", {"Dockerfile": df})
    assert build(store, ctx, capsys=capsys)[0] == 0
    rc, err = build(store, ctx, "--no-cache-filter", "b", capsys=capsys)
    assert rc == 0, err
    assert len(lines_with(err, "CACHED")) == 1 and len(lines_with(err, "DONE")) == 2


def test_same_inputs_give_the_same_digest_in_two_fresh_stores(tmp_path, capsys, monkeypatch):
    from tests.imagekit import busybox_image, busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    busybox_or_skip()
    ctx = write(tmp_path / "ctx", {"Dockerfile": APP + "ENV X=1\nCMD [\"sh\"]\n", "a.txt": "a"})
    os.utime(ctx / "a.txt", (2_000_000_000, 2_000_000_000))  # later than the epoch: clamped
    digests = []
    for n in (1, 2):
        s = Store(tmp_path / f"store{n}")
        busybox_image(s)
        rc, err = build(s, ctx, "-t", "r", "--build-arg", "SOURCE_DATE_EPOCH=1700000000", capsys=capsys)
        assert rc == 0, err
        digests.append(resolve(s, "r")[1].digest)
        config = resolve(s, "r")[1].config
        assert config["created"] == "2023-11-14T22:13:20Z"
    assert digests[0] == digests[1]


def test_independent_stages_run_at_the_same_time(store, tmp_path, capsys):
    # each stage waits until the other has started: they finish only if they overlap
    stages = []
    for name, other in (("a", "b"), ("b", "a")):
        stages.append(
            f"FROM busybox AS {name}\n"
            f"RUN --mount=type=cache,id=meet,target=/meet,sharing=shared "
            f"touch /meet/{name}-{os.getpid()} && i=0; while [ ! -e /meet/{other}-{os.getpid()} ]; do "
            f"i=$((i+1)); [ $i -gt 300 ] && exit 9; sleep 0.1; done; echo {name} > /{name}\n"
        )
    df = "".join(stages) + "FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n"
    ctx = write(tmp_path / "ctx", {"Dockerfile": df})
    rc, err = build(store, ctx, "-t", "par", "--jobs", "2", capsys=capsys)
    assert rc == 0, err
    tree = image_files(store, "par")
    assert tree["a"][2] == b"a\n" and tree["b"][2] == b"b\n"


def test_failing_step_names_its_line_exit_code_and_output(store, tmp_path, capsys):
    df = "FROM busybox\nRUN echo fine\nRUN echo oops-output >&2; exit 3\nRUN echo never\n"
    ctx = write(tmp_path / "ctx", {"Dockerfile": df})
    rc, err = build(store, ctx, capsys=capsys)
    assert rc == 1
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert error and "Dockerfile:3" in error[0] and "exit code: 3" in error[0], err
    assert "oops-output" in err
    assert "Traceback" not in err
    assert not any("never" in line for line in lines_with(err, "#3 "))


def test_unused_stage_is_not_built(store, tmp_path, capsys):
    df = "FROM busybox AS broken\nRUN exit 1\nFROM busybox\nRUN echo ok > /ok\n"
    ctx = write(tmp_path / "ctx", {"Dockerfile": df})
    rc, err = build(store, ctx, "-t", "u", capsys=capsys)
    assert rc == 0, err


def test_missing_base_image_says_how_to_get_it(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM alpine:3.19\nRUN true\n"})
    rc, err = build(store, ctx, capsys=capsys)
    assert rc == 1
    assert "Dockerfile:1" in err and "buildpy load" in err and "Traceback" not in err


def test_iidfile_quiet_and_outputs(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY a.txt /a.txt\n", "a.txt": "a"})
    iid = tmp_path / "iid"
    rc = main(["--root", str(store.root), "build", "--progress", "quiet", "--iidfile", str(iid), "-t", "o:1",
               "--output", f"type=oci,dest={tmp_path / 'oci'}",
               "--output", f"type=docker,dest={tmp_path / 'docker.tar'}",
               "--output", f"type=local,dest={tmp_path / 'local'}", str(ctx)])
    out = capsys.readouterr().out
    assert rc == 0
    image_id = iid.read_text()
    assert out.strip() == image_id == resolve(store, "o:1")[1].id
    assert json.loads((tmp_path / "oci" / "index.json").read_text())["manifests"]
    with tarfile.open(tmp_path / "docker.tar") as t:
        assert "manifest.json" in t.getnames()
    assert (tmp_path / "local" / "a.txt").read_text() == "a"
    assert (tmp_path / "local" / "bin" / "busybox").exists()


def test_cache_spec_mistakes_are_named(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\n"})
    for flag, spec, says in [("--cache-to", "type=s3,bucket=x", "type must be registry or local"),
                             ("--cache-to", "type=registry", "ref= is required"),
                             ("--cache-to", "type=registry,ref=x,mode=all", "mode must be min or max"),
                             ("--cache-from", "type=local,dest=x", "src= is required"),
                             ("--cache-to", "type=local,dest=d,colour=red", "unknown option 'colour'")]:
        rc, err = build(store, ctx, flag, spec, capsys=capsys)
        assert rc == 1 and flag in err and says in err and "Traceback" not in err, err


def test_history_and_empty_layers_as_buildkit_writes_them(store, tmp_path, capsys):
    df = ("FROM busybox\nARG A=1\nENV B=2\nWORKDIR /w\nWORKDIR /w\nRUN true\nRUN echo $A > f\n"
          "LABEL l=v\nCMD echo hi\n")
    ctx = write(tmp_path / "ctx", {"Dockerfile": df})
    assert build(store, ctx, "-t", "h", capsys=capsys)[0] == 0
    config = resolve(store, "h")[1].config
    history = [(h["created_by"], h.get("empty_layer", False)) for h in config["history"][1:]]
    assert history == [
        ("ARG A=1", True),
        ("ENV B=2", True),
        ("WORKDIR /w", False),
        ("WORKDIR /w", True),
        ("RUN |1 A=1 /bin/sh -c true # buildkit", True),
        ("RUN |1 A=1 /bin/sh -c echo $A > f # buildkit", False),
        ("LABEL l=v", True),
        ('CMD ["/bin/sh" "-c" "echo hi"]', True),
    ]
    assert len(config["rootfs"]["diff_ids"]) == 3
    assert config["config"]["WorkingDir"] == "/w"
    assert image_files(store, "h")["w/f"][2] == b"1\n"


def test_concurrent_builds_on_one_store(store, tmp_path, capsys):
    ctxs = [write(tmp_path / f"c{i}", {"Dockerfile": f"FROM busybox\nRUN echo {i} > /n\n"}) for i in range(3)]
    results: list[int] = []

    def one(i: int) -> None:
        results.append(main(["--root", str(store.root), "build", "--progress", "quiet", "-t", f"c{i}",
                             str(ctxs[i])]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0, 0]
    for i in range(3):
        assert image_files(store, f"c{i}")["n"][2] == f"{i}\n".encode()


def test_onbuild_triggers_run_in_the_child_build(store, tmp_path, capsys):
    parent = write(tmp_path / "p", {"Dockerfile": "FROM busybox\nONBUILD COPY x.txt /x.txt\nONBUILD RUN echo t > /t\n"})
    assert build(store, parent, "-t", "parent", capsys=capsys)[0] == 0
    assert resolve(store, "parent")[1].config["config"]["OnBuild"] == ["COPY x.txt /x.txt", "RUN echo t > /t"]
    child = write(tmp_path / "c", {"Dockerfile": "FROM parent\nRUN cat /x.txt /t > /both\n", "x.txt": "x\n"})
    rc, err = build(store, child, "-t", "child", capsys=capsys)
    assert rc == 0, err
    tree = image_files(store, "child")
    assert tree["both"][2] == b"x\nt\n"
    assert not resolve(store, "child")[1].config["config"].get("OnBuild")


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_no_change_fast_path_sees_every_input(store, tmp_path, capsys):
    """The stat-only answer is given only when nothing that matters changed."""
    from tests.imagekit import busybox_image

    ctx = write(tmp_path / "ctx", {"Dockerfile": APP, "a.txt": "a", ".dockerignore": "*.log\n"})
    assert build(store, ctx, "-t", "f", capsys=capsys)[0] == 0
    _rc, err = build(store, ctx, "-t", "f", capsys=capsys)
    assert "nothing changed since the last build" in err
    # a changed build arg, an edited .dockerignore, a re-tagged base: the full path (all cached)
    for change in ("arg", "ignore", "base", "dockerfile"):
        extra: list[str] = []
        if change == "arg":
            extra = ["--build-arg", "UNUSED=1"]
        elif change == "ignore":
            (ctx / ".dockerignore").write_text("*.log\n*.tmp\n")
        elif change == "base":
            busybox_image(store, extra={"etc/new": "x"})
        else:
            (ctx / "Dockerfile").write_text(APP + "ENV X=1\n")
        rc, err = build(store, ctx, "-t", "f", *extra, capsys=capsys)
        assert rc == 0 and "nothing changed" not in err, change
    tree = image_files(store, "f")
    assert tree["etc/new"][2] == b"x"  # the new base was used


def test_fast_path_result_is_pruned_with_its_image(store, tmp_path, capsys):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo 1 > /one\n"})
    assert build(store, ctx, "-t", "p", capsys=capsys)[0] == 0
    assert main(["--root", str(store.root), "rmi", "p"]) == 0
    assert main(["--root", str(store.root), "prune"]) == 0
    capsys.readouterr()
    rc, err = build(store, ctx, "-t", "p", capsys=capsys)
    assert rc == 0 and "nothing changed" not in err
    assert image_files(store, "p")["one"][2] == b"1\n"


def test_bind_mount_of_the_context_hides_ignored_files(store, tmp_path, capsys):
    df = "FROM busybox\nRUN --mount=type=bind,target=/ctx ls -a /ctx > /seen\n"
    ctx = write(tmp_path / "ctx", {"Dockerfile": df, "kept.txt": "k", ".env": "SECRET=1", ".dockerignore": ".env\n"})
    rc, err = build(store, ctx, "-t", "m", capsys=capsys)
    assert rc == 0, err
    seen = image_files(store, "m")["seen"][2].decode().split()
    assert "kept.txt" in seen and ".env" not in seen


def test_ssh_and_secret_flags_are_read_as_docker_reads_them(tmp_path):
    from buildpy.executor.session import OptionError, parse_secret, parse_ssh

    (tmp_path / "tok").write_text("t0k")
    assert parse_secret(f"id=a,src={tmp_path / 'tok'}") == ("a", b"t0k")
    assert parse_secret("id=b,env=MY_TOKEN", {"MY_TOKEN": "v"}) == ("b", b"v")
    assert parse_secret("id=MY_TOKEN", {"MY_TOKEN": "v"}) == ("MY_TOKEN", b"v")
    with pytest.raises(OptionError):
        parse_secret("id=c,env=UNSET", {})
    assert parse_ssh("default", {"SSH_AUTH_SOCK": "/s"}) == ("default", "/s")
    assert parse_ssh("gh=/run/agent.sock", {}) == ("gh", "/run/agent.sock")
    with pytest.raises(OptionError):
        parse_ssh("default", {})


def test_tty_progress_draws_a_bar_and_keeps_the_tail(store, tmp_path):
    from buildpy.executor.progress import TtyProgress

    stream = io.StringIO()
    view = TtyProgress(2, stream)

    class FakeStep:  # the view reads only these
        number = 1
        label = "[stage-0 2/2] RUN echo"

    view.start(FakeStep)  # type: ignore[arg-type]
    view.output(FakeStep, b"line one\nline two\n")  # type: ignore[arg-type]
    view.done(FakeStep, 0.5)  # type: ignore[arg-type]
    view.close()
    text = stream.getvalue()
    assert "#1 [stage-0 2/2] RUN echo" in text and "DONE 0.5s" in text
    assert view.tail(FakeStep) == ["line one", "line two"]  # type: ignore[arg-type]


def test_snapshot_written_with_a_copy_layer_is_what_unpacking_the_layer_gives(store, tmp_path, capsys):
    """COPY writes its layer's snapshot itself (as root); it must equal the blob unpacked."""
    from buildpy.cas.unpack import unpack_blob
    from buildpy.sandbox import snapshots
    from tests.buildcases import tree

    if os.geteuid() != 0:
        pytest.skip("the snapshot is written with the layer only as root")
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY --chown=app:staff . /app/\n",
                                   "a.txt": "a" * 10000, "d/b.txt": "b", "d/e/c.txt": ""})
    os.symlink("a.txt", ctx / "link")
    os.link(ctx / "a.txt", ctx / "hard")
    (ctx / "d").chmod(0o750)
    assert build(store, ctx, "-t", "s", capsys=capsys)[0] == 0
    image = resolve(store, "s")[1]
    layer, diff_id = image.layers[-1], image.diff_ids[-1]
    written = snapshots.snapshot_path(store, diff_id)
    assert written.is_dir()
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    unpacked.chmod(0o755)
    unpack_blob(store, layer, unpacked, whiteouts="overlay")
    ours, theirs = tree(written), tree(unpacked)
    assert ours == theirs
    assert os.stat(written / "app" / "a.txt").st_ino == os.stat(written / "app" / "hard").st_ino
