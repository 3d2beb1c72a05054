"""`buildpy lint` and the checks `buildpy build` runs first, through the CLI."""

from __future__ import annotations

import json

import pytest

from buildpy.cas.store import Store
from buildpy.cli import main
from tests.imagekit import busybox_image, busybox_or_skip

BAD = "from busybox as Builder\nRUN echo hi\nCMD echo run\n"


def cli(*args: str, capsys) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def ctx(tmp_path):
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text(BAD)
    return d


def test_lint_text_json_sarif_and_exit_status(ctx, capsys):
    rc, out, _ = cli("lint", str(ctx), capsys=capsys)
    assert rc == 1
    assert out.splitlines()[:3] == [
        "Dockerfile:1: StageNameCasing: Stage name 'Builder' should be lowercase",
        "Dockerfile:1: ConsistentInstructionCasing: Command 'from' should match the case of the command majority "
        "(uppercase)",
        "Dockerfile:3: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior "
        "related to OS signals",
    ]
    rc, out, _ = cli("lint", "--format", "json", str(ctx), capsys=capsys)
    assert [w["ruleName"] for w in json.loads(out)["warnings"]] == [
        "StageNameCasing", "ConsistentInstructionCasing", "JSONArgsRecommended"]
    rc, out, _ = cli("lint", "--format", "sarif", "--error", str(ctx), capsys=capsys)
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0" and {r["level"] for r in sarif["runs"][0]["results"]} == {"error"}
    rc, out, _ = cli("lint", "--skip", "StageNameCasing,ConsistentInstructionCasing", "--skip", "JSONArgsRecommended",
                     str(ctx), capsys=capsys)
    assert rc == 0 and "no problems" in out
    (ctx / "Dockerfile").write_text("FROM busybox\nCMD [\"true\"]\n")
    rc, out, _ = cli("lint", str(ctx), capsys=capsys)
    assert rc == 0


def test_build_warns_first_and_check_stops(ctx, tmp_path, capsys):
    busybox_or_skip()
    store = Store(tmp_path / "store")
    busybox_image(store)
    rc, out, err = cli("--root", str(store.root), "build", "--progress", "plain", "-t", "w:1", str(ctx), capsys=capsys)
    assert rc == 0, err
    assert "warning: Dockerfile:3: JSONArgsRecommended" in err and err.index("warning:") < err.index("#1 ")
    # remembered: the same warnings the second time, from the memo
    rc, out, err2 = cli("--root", str(store.root), "build", "--progress", "plain", "-t", "w:1", str(ctx), capsys=capsys)
    assert rc == 0 and [x for x in err2.splitlines() if x.startswith("warning:")] == \
        [x for x in err.splitlines() if x.startswith("warning:")]
    rc, out, err = cli("--root", str(store.root), "build", "--check", str(ctx), capsys=capsys)
    assert rc == 1 and "3 warnings found" in out and "#1" not in err
    (ctx / "Dockerfile").write_text("# check=error=true\n" + BAD)
    rc, out, err = cli("--root", str(store.root), "build", str(ctx), capsys=capsys)
    assert rc == 1 and "error=true" in err and "Traceback" not in err
    (ctx / "Dockerfile").write_text("# check=skip=all\n" + BAD)
    rc, out, err = cli("--root", str(store.root), "build", str(ctx), capsys=capsys)
    assert rc == 0 and "warning:" not in err


def test_checks_know_the_base_images_the_store_has(tmp_path, capsys):
    busybox_or_skip()
    store = Store(tmp_path / "store")
    busybox_image(store, extra=None)
    from tests.imagekit import busybox_tar, image_from_tars

    image_from_tars(store, [busybox_tar()], "docker.io/library/withenv:1", config={"Env": ["X=1", "PATH=/bin"]})
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text("FROM withenv:1\nENV Y=$X$NOPE\n")
    rc, out, _ = cli("--root", str(store.root), "lint", str(d), capsys=capsys)
    assert rc == 1 and "'$NOPE'" in out and "'$X'" not in out
    rc, out, _ = cli("--root", str(tmp_path / "empty-store"), "lint", str(d), capsys=capsys)
    assert "'$X'" in out  # unknown image: its env is unknown too
