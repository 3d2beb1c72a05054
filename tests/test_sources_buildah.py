"""Git and http contexts built by us and by Debian's buildah 1.28 (`buildah bud URL`): the two
images' trees and configs must agree path by path, as for the testdata cases."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path


from buildpy.cas.store import Store
from tests import buildcases, buildkit_cases
from tests.test_build_buildah import oracle  # noqa: F401 - the fixture
from tests.test_sources import DOCKERFILE, git, git_daemon, serve_dir, tar_of

FILES = {"Dockerfile": DOCKERFILE + "WORKDIR /w\nENV X=1\nCMD [\"sh\"]\n", "a.txt": "hello\n",
         "sub/b.txt": "b\n"}


def _compare(url: str, oracle, tmp_path: Path) -> None:  # noqa: F811
    base_store, buildah = oracle
    tag = f"localhost/src-{abs(hash(url))}:1"
    run = buildah.build(url, [], tag, tmp_path)  # type: ignore[arg-type]
    assert run.returncode == 0, f"buildah failed\n{run.stderr}"
    theirs_docker = buildah.export(tag, tmp_path / "buildah-oci")
    buildcases.unpack_oci_layout(tmp_path / "buildah-oci", tmp_path / "theirs")
    root = tmp_path / "store"
    shutil.copytree(base_store, root, symlinks=True)
    proc = subprocess.run([*buildkit_cases.buildpy_command(), "--root", str(root), "build", "-t", "ours:1", url],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours_config = buildcases.unpack_store_image(Store(root), "ours:1", tmp_path / "ours")
    ours = buildkit_cases.assert_same_as_buildah(tmp_path / "ours", ours_config, tmp_path / "theirs", theirs_docker)
    assert "/ctx/a.txt" in ours or "ctx/a.txt" in ours


def test_git_context_as_buildah_builds_it(oracle, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    (repo / "app").mkdir(parents=True)
    git("init", "-q", "-b", "main", ".", cwd=repo)
    for name, data in FILES.items():
        (repo / "app" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "app" / name).write_text(data)
    git("add", ".", cwd=repo)
    git("commit", "-qm", "one", cwd=repo)
    served = tmp_path / "served"
    git("clone", "-q", "--bare", str(repo), str(served / "project.git"), cwd=tmp_path)
    with git_daemon(served) as port:
        _compare(f"git://127.0.0.1:{port}/project.git#main:app", oracle, tmp_path)

def test_http_tarball_context_as_buildah_builds_it(oracle, tmp_path):  # noqa: F811
    served = tmp_path / "served"
    served.mkdir()
    (served / "ctx.tar.gz").write_bytes(gzip.compress(tar_of(FILES)))
    with serve_dir(served) as base:
        _compare(f"{base}/ctx.tar.gz", oracle, tmp_path)
