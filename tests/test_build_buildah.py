"""buildah as the oracle: each case marked `"buildah": true` is built by Debian's buildah
(`buildah bud --isolation chroot --layers=false --format docker --pull-never`, in a temporary
storage of its own, our busybox copied in with skopeo) and by the `buildpy build` command; the two
file trees must agree path by path (type, mode, owner, content, link target; not mtimes) and so
must the config fields a Dockerfile sets. Where buildah and BuildKit differ, BuildKit is our
reference and the case is not marked (or the path is in `differs_on_purpose`, with the reason)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildpy.cas import archive
from buildpy.cas.store import Store
from tests import buildcases, buildkit_cases

CASES = [c for c in buildcases.case_dirs() if buildcases.expected(c).get("buildah")]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    from tests.imagekit import busybox_or_skip
    from tests.sandboxkit import sandbox_or_skip

    if os.geteuid() != 0:
        pytest.skip("buildah's chroot isolation and vfs storage need root here")
    for tool in ("buildah", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    sandbox_or_skip()
    busybox_or_skip()
    base = tmp_path_factory.mktemp("oracle")
    store = buildkit_cases.make_base_store(base / "store")
    layout = base / "busybox-oci"
    archive.export_oci(store, [buildkit_cases.BASE_IMAGE], layout)
    buildah = buildkit_cases.Buildah(base / "buildah")
    buildah.load(layout, "latest", buildkit_cases.BASE_IMAGE)
    yield store.root, buildah
    buildah.remove_all()


def test_enough_cases_are_compared():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_as_buildah(case: Path, oracle, tmp_path: Path):
    exp = buildcases.expected(case)
    if exp.get("serve"):
        with buildcases.served(exp["serve"]) as url:
            compare(case, exp, oracle, tmp_path, url)
    else:
        compare(case, exp, oracle, tmp_path, "")


def compare(case: Path, exp: dict, oracle, tmp_path: Path, url: str) -> None:
    base_store, buildah = oracle
    tag = f"localhost/oracle-{case.name}:1"
    run = buildah.build(case, buildkit_cases.case_args(case, exp, url), tag, tmp_path)
    assert run.returncode == 0, f"buildah failed\n{run.stderr}"
    theirs_docker = buildah.export(tag, tmp_path / "buildah-oci")
    buildcases.unpack_oci_layout(tmp_path / "buildah-oci", tmp_path / "theirs")

    root = tmp_path / "store"
    shutil.copytree(base_store, root, symlinks=True)
    proc = buildkit_cases.run_buildpy(root, case, exp, "ours:1", tmp_path, url)
    assert proc.returncode == 0, buildkit_cases.outcome(proc)
    ours_config = buildcases.unpack_store_image(Store(root), "ours:1", tmp_path / "ours")

    buildkit_cases.assert_same_as_buildah(tmp_path / "ours", ours_config, tmp_path / "theirs", theirs_docker)


def test_the_comparison_can_fail():
    """Two configs that differ in one field are told apart; empty and unset are the same."""
    a = buildkit_cases.comparable_config({"Cmd": ["sh"], "Volumes": {}, "Labels": {"io.buildah.version": "1"}}, "")
    assert a == {"Cmd": ["sh"]}
    assert a != buildkit_cases.comparable_config({"Cmd": ["sh"], "User": "app"}, "")
    assert buildkit_cases.differs_on_purpose("/etc/hosts") and not buildkit_cases.differs_on_purpose("/etc/passwd")
