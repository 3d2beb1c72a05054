"""Building the `testdata/dockerfiles/` cases as a user does and judging the result by BuildKit's
rules: buildpy runs as its own process (`.venv/bin/buildpy --root STORE build ...`, the installed
command line), buildah (the oracle) with a temporary storage of its own.

Reading a case, serving its URLs and reading an image's tree are in `tests/buildcases.py`; here
are running the two builders, checking an image against a case's `expected.json` (format in
`testdata/dockerfiles/README.md`), and the config fields both builders must agree on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from buildpy.cas.compress import decompress_reader, detect
from buildpy.cas.store import Store
from tests import buildcases

TIMEOUT = 300
BASE_IMAGE = "docker.io/library/busybox:latest"


def buildpy_command() -> list[str]:
    """The installed `buildpy` entry point beside this interpreter (the venv's), else `-m`."""
    script = Path(sys.executable).with_name("buildpy")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "buildpy"]


def make_base_store(root: Path) -> Store:
    """A store holding only our busybox image, tagged busybox:latest."""
    from tests.imagekit import busybox_image

    store = Store(root)
    busybox_image(store, BASE_IMAGE)
    return store


def case_args(case: Path, exp: dict[str, Any], url: str = "") -> list[str]:
    """The case's build flags, `{context}` and a relative `-f` made absolute."""
    args = buildcases.build_args(case, exp, url)
    for i, arg in enumerate(args[:-1]):
        if arg in ("-f", "--file"):
            args[i + 1] = str(case / args[i + 1])
    return args


def run_buildpy(root: Path, case: Path, exp: dict[str, Any], tag: str, cwd: Path,
                url: str = "") -> subprocess.CompletedProcess[str]:
    """`buildpy --root ROOT build --progress plain -t TAG ARGS CONTEXT`, from `cwd`."""
    cmd = [*buildpy_command(), "--root", str(root), "build", "--progress", "plain", "-t", tag,
           *case_args(case, exp, url), str(case)]
    env = {k: v for k, v in os.environ.items() if k not in ("BUILDPY_ROOT", "SOURCE_DATE_EPOCH")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def outcome(proc: subprocess.CompletedProcess[str]) -> str:
    """How the process ended, and what it said: for an assertion's message."""
    rc = proc.returncode
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    return f"{how}\n{proc.stderr}"


def check_error(proc: subprocess.CompletedProcess[str], want: dict[str, Any]) -> None:
    """The build failed as `want` says: exit status, one `error:` line, no traceback."""
    err = proc.stderr
    assert proc.returncode == want["status"], outcome(proc)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one 'error:' line\n{err}"
    assert want["contains"] in lines[0], err
    assert want.get("also", "") in err, err
    assert "Traceback" not in err, err


def check_image(tree_root: Path, config: dict[str, Any], exp: dict[str, Any], base_history: int) -> None:
    """The unpacked image at `tree_root` and its config against `exp`; `base_history` is the
    length of the base image's history (the entries this build did not write)."""
    for path, want in exp.get("files", {}).items():
        got = buildcases.node(tree_root, path)
        assert got is not None, f"{path} is missing"
        for key, value in want.items():
            assert got.get(key) == value, f"{path}: {key} is {got.get(key)!r}, expected {value!r}"
    for path in exp.get("absent", []):
        assert buildcases.node(tree_root, path) is None, f"{path} should not be in the image"
    for key, value in exp.get("config", {}).items():
        got = (config.get("config") or {}).get(key)
        assert got == value, f"config {key}: {got!r}, expected {value!r}"
    for key, value in exp.get("image", {}).items():
        assert config.get(key) == value, f"{key}: {config.get(key)!r}, expected {value!r}"
    history = config.get("history", [])
    if "history" in exp:
        ours = [[h.get("created_by", ""), h.get("empty_layer", False)] for h in history]
        want = exp["history"]
        assert ours[-len(want):] == want, f"history ends {ours[-len(want):]!r}"
    if "history_created" in exp:
        new = history[base_history:]
        assert new, "the build wrote no history"
        assert {h.get("created") for h in new} == {exp["history_created"]}, new
    if "mtime_max" in exp:
        newest = max((n["mtime"], p) for p, n in buildcases.tree(tree_root).items())
        assert newest[0] <= exp["mtime_max"], f"{newest[1]} has mtime {newest[0]}"


def assert_nowhere(secret: bytes, root: Path, tree_root: Path) -> None:
    """`secret` is in no file of the store (blobs read uncompressed) nor of the image."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            with open(path, "rb") as f:
                compression = detect(f.read(4))
                f.seek(0)
                with decompress_reader(f, compression) as r:
                    data = r.read()
            assert secret not in data, f"the secret is in {path}"
    for path in tree_root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret not in path.read_bytes(), f"the secret is in the image's {path}"


# --- buildah, the oracle -----------------------------------------------------------------------

# The fields of `config` a Dockerfile sets; empty and unset are the same (Docker's format writes
# `{}`/`[]` where OCI's omits the field).
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes",
                 "StopSignal", "Healthcheck", "OnBuild", "Shell")


def comparable_config(config: dict[str, Any], author: str | None) -> dict[str, Any]:
    """The fields both builders must agree on; buildah's own label left out."""
    out: dict[str, Any] = {}
    for key in CONFIG_FIELDS:
        value = config.get(key)
        if key == "Labels" and value:
            value = {k: v for k, v in value.items() if k != "io.buildah.version"}
        if value not in (None, "", [], {}):
            out[key] = value
    if author:
        out["author"] = author
    return out


def differs_on_purpose(path: str) -> bool:
    """Paths where buildah's trees differ from BuildKit's by design (BuildKit is our reference)."""
    # buildah leaves the stubs it made for /etc/hosts, /etc/hostname and /etc/resolv.conf, /run,
    # and the parents of RUN --mount targets it had to create (/mnt, /run/secrets) in the image;
    # BuildKit removes the stubs and mount points it created, parents too, when they are still
    # empty (executor.MountStubsCleaner), as we do (the run-mount-* cases list them as absent).
    return path in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run", "/run/secrets", "/mnt")


class Buildah:
    """buildah with a storage of its own under `base` (vfs: no overlay mounts to clean up)."""

    def __init__(self, base: Path) -> None:
        self.storage = ["--root", str(base / "root"), "--runroot", str(base / "run"), "--storage-driver", "vfs"]
        self.transport = f"containers-storage:[vfs@{base / 'root'}+{base / 'run'}]"

    def load(self, layout: Path, ref_name: str, name: str) -> None:
        """Copy the image `ref_name` of the OCI layout `layout` in as `name` (skopeo)."""
        subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:{ref_name}", self.transport + name],
                       check=True, capture_output=True, timeout=TIMEOUT)

    def build(self, case: Path, args: list[str], tag: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        # docker format: OCI's config has no Healthcheck, OnBuild or Shell (buildah drops them,
        # with a warning), BuildKit writes them as Docker's extension fields of the OCI config.
        cmd = ["buildah", *self.storage, "bud", "-q", "--isolation", "chroot", "--pull-never", "--layers=false",
               "--format", "docker", "-t", tag, *args, str(case)]
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)

    def export(self, tag: str, layout: Path) -> dict[str, Any]:
        """Write the image `tag` to an OCI layout; returns its config as `buildah inspect` shows
        the Docker-format config (the one the layout's OCI config lost fields from)."""
        subprocess.run(["buildah", *self.storage, "push", "-q", tag, f"oci:{layout}:{tag}"],
                       check=True, capture_output=True, timeout=TIMEOUT)
        out = subprocess.run(["buildah", *self.storage, "inspect", "--type", "image", tag],
                             check=True, capture_output=True, text=True, timeout=TIMEOUT).stdout
        return json.loads(out)["Docker"]

    def remove_all(self) -> None:
        subprocess.run(["buildah", *self.storage, "rmi", "--all", "--force"], capture_output=True, timeout=TIMEOUT)


def assert_same_as_buildah(ours_root: Path, ours_config: dict[str, Any], theirs_root: Path,
                           theirs_docker: dict[str, Any]) -> dict[str, Any]:
    """Two unpacked images agree path by path (type, mode, ids, content; not mtimes, not what
    buildah leaves on purpose) and config by config; returns our tree."""
    from tests import buildcases

    ours, theirs = buildcases.tree(ours_root), buildcases.tree(theirs_root)
    for tree in (ours, theirs):
        for n in tree.values():
            n.pop("mtime")
    paths = sorted(p for p in set(ours) | set(theirs) if not differs_on_purpose(p))
    diffs = [f"{p}: ours {ours.get(p)} buildah {theirs.get(p)}" for p in paths if ours.get(p) != theirs.get(p)]
    assert not diffs, "\n".join(diffs[:20])
    want = comparable_config(theirs_docker.get("config") or {}, theirs_docker.get("author"))
    got = comparable_config(ours_config.get("config") or {}, ours_config.get("author"))
    assert got == want
    return ours
