"""Every case of `testdata/dockerfiles/` built by the `buildpy build` command (a process of its
own, as a user runs it) and checked against its `expected.json`: the files of the image (type,
mode, ids, content, link target), the paths it must not have, its config and history, or the
error the build must end in. The expected values are BuildKit's (`docker build`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from tests import buildcases, buildkit_cases

CASES = buildcases.case_dirs()


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    """A store with only busybox:latest; each case builds in a copy of it."""
    from tests.imagekit import busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    busybox_or_skip()
    root = tmp_path_factory.mktemp("cases") / "store"
    buildkit_cases.make_base_store(root)
    return root


def test_there_are_enough_cases():
    assert len(CASES) >= 45
    for case in CASES:
        assert (case / "Dockerfile").is_file() or "-f" in buildcases.expected(case).get("args", []), case


def test_every_expected_json_uses_known_keys():
    known = {"args", "files", "absent", "config", "image", "history", "history_created", "error", "serve",
             "not_in_layers", "mtime_max", "buildah", "note"}
    file_keys = {"type", "mode", "uid", "gid", "content", "linkname"}
    for case in CASES:
        exp = buildcases.expected(case)
        assert set(exp) <= known, f"{case.name}: unknown keys {set(exp) - known}"
        for path, want in exp.get("files", {}).items():
            assert path.startswith("/") and set(want) <= file_keys, f"{case.name}: {path} {want}"
        if "error" in exp:
            assert {"status", "contains"} <= set(exp["error"]), case.name
            assert not exp.get("buildah"), f"{case.name}: the oracle compares images, not errors"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path, base_store: Path, tmp_path: Path):
    exp = buildcases.expected(case)
    root = tmp_path / "store"
    shutil.copytree(base_store, root, symlinks=True)
    if exp.get("serve"):
        with buildcases.served(exp["serve"]) as url:
            proc = buildkit_cases.run_buildpy(root, case, exp, "case:1", tmp_path, url)
    else:
        proc = buildkit_cases.run_buildpy(root, case, exp, "case:1", tmp_path)
    if "error" in exp:
        buildkit_cases.check_error(proc, exp["error"])
        return
    assert proc.returncode == 0, buildkit_cases.outcome(proc)
    assert "Traceback" not in proc.stderr, proc.stderr
    store = Store(root)
    base_history = len(resolve(store, buildkit_cases.BASE_IMAGE)[1].config.get("history", []))
    config = buildcases.unpack_store_image(store, "case:1", tmp_path / "tree")
    buildkit_cases.check_image(tmp_path / "tree", config, exp, base_history)
    if "not_in_layers" in exp:
        buildkit_cases.assert_nowhere(exp["not_in_layers"].encode(), root, tmp_path / "tree")


def test_case_image_is_in_the_store_under_its_tag(base_store: Path, tmp_path: Path):
    case = buildcases.CASES / "from-scratch"
    root = tmp_path / "store"
    shutil.copytree(base_store, root, symlinks=True)
    proc = buildkit_cases.run_buildpy(root, case, {}, "case:1", tmp_path)
    assert proc.returncode == 0, buildkit_cases.outcome(proc)
    assert resolve(Store(root), "case:1")[1].layers


def test_a_wrong_expectation_fails(base_store: Path, tmp_path: Path):
    """The checks can fail: a case's image judged against another case's expectations."""
    case = buildcases.CASES / "from-scratch"
    root = tmp_path / "store"
    shutil.copytree(base_store, root, symlinks=True)
    proc = buildkit_cases.run_buildpy(root, case, {}, "case:1", tmp_path)
    assert proc.returncode == 0, buildkit_cases.outcome(proc)
    config = buildcases.unpack_store_image(Store(root), "case:1", tmp_path / "tree")
    wrong = [{"files": {"/hello.txt": {"content": "bye\n"}}}, {"absent": ["/hello.txt"]},
             {"config": {"Cmd": ["sh"]}}, {"history": [["RUN nothing", False]]}]
    for exp in wrong:
        with pytest.raises(AssertionError):
            buildkit_cases.check_image(tmp_path / "tree", config, exp, 0)
