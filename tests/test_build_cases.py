"""Every case of `testdata/dockerfiles/` built with `buildpy build` and checked against its
`expected.json`: the files of the image (type, mode, ids, content, link target), the paths it
must not have, its config and history, or the error the build must end in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from buildpy.cli import main
from tests import buildcases

CASES = buildcases.case_dirs()


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    from tests.imagekit import busybox_image, busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    busybox_or_skip()
    root = tmp_path_factory.mktemp("cases") / "store"
    busybox_image(Store(root))
    return root


def test_there_are_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path, base_store: Path, tmp_path: Path, capsys):
    exp = buildcases.expected(case)
    root = tmp_path / "store"
    shutil.copytree(base_store, root, symlinks=True)
    serve = exp.get("serve")
    if serve:
        with buildcases.served(serve) as url:
            rc, err = _build(root, case, exp, url, capsys)
    else:
        rc, err = _build(root, case, exp, "", capsys)
    if "error" in exp:
        assert rc == exp["error"]["status"], err
        line = [l for l in err.splitlines() if l.startswith("error:")]
        assert line, err
        assert exp["error"]["contains"] in line[0], err
        assert exp["error"].get("also", "") in err
        assert "Traceback" not in err
        return
    assert rc == 0, err
    store = Store(root)
    config = buildcases.unpack_store_image(store, "case:1", tmp_path / "tree")
    check_image(tmp_path / "tree", config, exp)
    if "not_in_layers" in exp:
        secret = exp["not_in_layers"].encode()
        for blob in (root / "blobs" / "sha256").iterdir():
            assert secret not in blob.read_bytes()
        for path in (tmp_path / "tree").rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret not in path.read_bytes(), path


def _build(root: Path, case: Path, exp: dict, url: str, capsys) -> tuple[int, str]:
    args = buildcases.build_args(case, exp, url)
    if "-f" in args:
        i = args.index("-f")
        args[i + 1] = str(case / args[i + 1])
    rc = main(["--root", str(root), "build", "--progress", "plain", "-t", "case:1", *args, str(case)])
    return rc, capsys.readouterr().err


def check_image(tree_root: Path, config: dict, exp: dict) -> None:
    for path, want in exp.get("files", {}).items():
        got = buildcases.node(tree_root, path)
        assert got is not None, f"{path} is missing"
        for key, value in want.items():
            assert got[key] == value, f"{path}: {key} is {got[key]!r}, expected {value!r}"
    for path in exp.get("absent", []):
        assert buildcases.node(tree_root, path) is None, f"{path} should not be in the image"
    for key, value in exp.get("config", {}).items():
        assert config["config"].get(key) == value, f"config {key}: {config['config'].get(key)!r} != {value!r}"
    for key, value in exp.get("image", {}).items():
        assert config.get(key) == value, f"{key}: {config.get(key)!r} != {value!r}"
    if "history" in exp:
        ours = [[h["created_by"], h.get("empty_layer", False)] for h in config["history"]]
        want = exp["history"]
        assert ours[-len(want):] == want
    if "mtime_max" in exp:
        new = [n for n in buildcases.tree(tree_root).values()]
        assert max(n["mtime"] for n in new) <= exp["mtime_max"]


def test_case_image_is_in_the_store_under_its_tag(base_store, tmp_path, capsys):
    case = buildcases.CASES / "from-scratch"
    root = tmp_path / "store"
    shutil.copytree(base_store, root, symlinks=True)
    assert _build(root, case, {}, "", capsys)[0] == 0
    assert resolve(Store(root), "case:1")[1].layers
