"""The build cache shared through a registry (and a local directory): the CI story with two
separate stores, lazily fetched layers, min and max modes, cache mounts that travel, and FROM
an image that only the registry has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from buildpy.cli import main
from tests.imagekit import busybox_image

DOCKERFILE = """\
FROM {base} AS builder
COPY src/ /src/
RUN --mount=type=cache,target=/root/.cache cat /src/* > /built && date +%s%N >> /root/.cache/runs
FROM builder AS tested
RUN cp /built /tested
FROM {base}
COPY --from=tested /tested /app/tested
COPY config.txt /app/config.txt
RUN wc -c /app/tested > /app/size
"""


def cli(store: Store, *args: str, capsys) -> tuple[int, str]:
    rc = main(["--root", str(store.root), *args])
    out, err = capsys.readouterr()
    return rc, out + err


@pytest.fixture
def pushed_base(registry, tmp_path, capsys, monkeypatch) -> str:
    """busybox in the registry (not in any build store): FROM pulls it."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    seed = Store(tmp_path / "seed")
    busybox_image(seed, "busybox:1")
    ref = f"{registry.host}/base/busybox:1"
    assert cli(seed, "push", "busybox:1", ref, capsys=capsys)[0] == 0
    return ref


def context(tmp_path: Path, base: str) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    (ctx / "src" / "a.txt").write_text("a" * 1000)
    (ctx / "src" / "b.txt").write_text("b" * 1000)
    (ctx / "config.txt").write_text("debug=false\n")
    return ctx


def ran_steps(output: str) -> list[str]:
    """The labels of the steps that ran (those with a `runs:` line)."""
    labels: dict[str, str] = {}
    out = []
    for line in output.splitlines():
        if line.startswith("#") and " [" in line:
            n, _, label = line.partition(" ")
            labels[n] = label
        elif line.startswith("#") and " runs: " in line:
            out.append(labels[line.split(" ")[0]])
    return out


def test_ci_story_second_machine_runs_nothing_and_gets_the_same_image(registry, pushed_base, tmp_path, capsys):
    ctx = context(tmp_path, pushed_base)
    cache = f"{registry.host}/ci/app:buildcache"
    a = Store(tmp_path / "machine-a")
    rc, out = cli(a, "build", "--progress", "plain", "-t", "app:1",
                  "--cache-to", f"type=registry,ref={cache},mode=max,cache-mounts=true", str(ctx), capsys=capsys)
    assert rc == 0, out
    assert len(ran_steps(out)) == 6
    _, image_a = resolve(a, "app:1")

    b = Store(tmp_path / "machine-b")
    rc, out = cli(b, "build", "--progress", "plain", "-t", "app:1", "--cache-from", f"type=registry,ref={cache}",
                  str(ctx), capsys=capsys)
    assert rc == 0, out
    assert ran_steps(out) == [], out
    _, image_b = resolve(b, "app:1")
    assert image_b.digest == image_a.digest
    # only what the image holds came over: not the builder stage's layers
    _, builder_only = _stage_layers(a, image_a)
    assert builder_only and not any(b.has_blob(d) for d in builder_only)
    assert all(b.has_blob(d.digest) for d in image_b.layers)
    assert main(["--root", str(b.root), "fsck"]) == 0
    # the cache mount's contents came along
    runs = list((b.root / "cache-mounts").glob("*/runs"))
    assert len(runs) == 1 and len(runs[0].read_text().split()) == 1

    # one file changed: machine B reruns only what reads it
    (ctx / "config.txt").write_text("debug=true\n")
    rc, out = cli(b, "build", "--progress", "plain", "-t", "app:2", "--cache-from", f"type=registry,ref={cache}",
                  str(ctx), capsys=capsys)
    assert rc == 0, out
    assert [label.split("]")[0] + "]" for label in ran_steps(out)] == ["[stage-2 3/4]", "[stage-2 4/4]"], out

    (ctx / "src" / "a.txt").write_text("A")
    rc, out = cli(b, "build", "--progress", "plain", "-t", "app:3", "--cache-from", f"type=registry,ref={cache}",
                  str(ctx), capsys=capsys)
    assert rc == 0, out
    assert len(ran_steps(out)) == 6
    # the restored cache mount was used: the builder's RUN appended its run to A's
    assert len(runs[0].read_text().split()) == 2


def _stage_layers(store: Store, image) -> tuple[set[str], set[str]]:  # noqa: ANN001
    """(layers in the image, layers of cache records not in the image)."""
    in_image = {d.digest for d in image.layers}
    others = set()
    for path in (store.root / "buildcache").rglob("*"):
        if path.is_file():
            layer = json.loads(path.read_text()).get("layer")
            if layer and layer["digest"] not in in_image:
                others.add(layer["digest"])
    return in_image, others


def test_mode_min_exports_only_the_final_stages_steps(registry, pushed_base, tmp_path, capsys):
    ctx = context(tmp_path, pushed_base)
    cache = f"{registry.host}/ci/app:min"
    a = Store(tmp_path / "a")
    rc, out = cli(a, "build", "--progress", "plain", "-t", "app:1", "--cache-to", f"type=registry,ref={cache}",
                  str(ctx), capsys=capsys)
    assert rc == 0, out
    assert "exported cache" in out and ": 3 steps" in out, out
    b = Store(tmp_path / "b")
    rc, out = cli(b, "build", "--progress", "plain", "-t", "app:1", "--cache-from", cache, str(ctx), capsys=capsys)
    assert rc == 0, out
    # the builder stages were not exported: they run; the final stage's records are there,
    # but its COPY --from reads a stage that ran, whose layer digest is the same, so it is reused
    assert [label.split(" ")[0] for label in ran_steps(out)] == ["[builder", "[builder", "[tested"], out


def test_local_cache_directory(registry, pushed_base, tmp_path, capsys):
    ctx = context(tmp_path, pushed_base)
    cache_dir = tmp_path / "cache-dir"
    a = Store(tmp_path / "a")
    rc, out = cli(a, "build", "--progress", "plain", "-t", "app:1",
                  "--cache-to", f"type=local,dest={cache_dir},mode=max", str(ctx), capsys=capsys)
    assert rc == 0, out
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["manifests"][0]["artifactType"] == "application/vnd.buildpy.cache.v1"
    b = Store(tmp_path / "b")
    rc, out = cli(b, "build", "--progress", "plain", "-t", "app:1", "--cache-from", f"type=local,src={cache_dir}",
                  str(ctx), capsys=capsys)
    assert rc == 0, out
    assert ran_steps(out) == []
    assert resolve(a, "app:1")[1].digest == resolve(b, "app:1")[1].digest


def test_unreadable_cache_is_a_warning_not_a_failure(registry, pushed_base, tmp_path, capsys):
    ctx = context(tmp_path, pushed_base)
    b = Store(tmp_path / "b")
    rc, out = cli(b, "build", "--progress", "plain", "--cache-from", f"type=registry,ref={registry.host}/no/cache:1",
                  str(ctx), capsys=capsys)
    assert rc == 0, out
    assert "warning: cache import" in out and "MANIFEST_UNKNOWN" in out


def test_from_an_image_only_the_registry_has_and_output_registry(registry, pushed_base, tmp_path, capsys):
    store = Store(tmp_path / "s")
    ctx = tmp_path / "ctx2"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {pushed_base}\nRUN echo hi > /hi\n")
    target = f"{registry.host}/out/app:1"
    rc, out = cli(store, "build", "--progress", "plain", "-t", target, "--output", "type=registry", str(ctx),
                  capsys=capsys)
    assert rc == 0, out
    assert store.get_ref(pushed_base) is not None  # fetched whole: kept, as pull keeps it
    _, image = resolve(store, target)
    fresh = Store(tmp_path / "fresh")
    rc, out = cli(fresh, "pull", target, capsys=capsys)
    assert rc == 0, out
    assert resolve(fresh, target)[1].digest == image.digest


def test_damaged_local_cache_is_a_warning(registry, pushed_base, tmp_path, capsys):
    import hashlib

    ctx = context(tmp_path, pushed_base)
    root = tmp_path / "bad-cache"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        (blobs / hexd).write_bytes(data)
        return f"sha256:{hexd}"

    config = json.dumps({"records": {"k": {"layer": -1, "diff_id": "sha256:" + "0" * 64}}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "config": {
        "mediaType": "application/vnd.buildpy.cache.config.v1+json", "digest": put(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(b"x"), "size": 1}]
    }).encode()
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    store = Store(tmp_path / "s")
    rc, out = cli(store, "build", "--progress", "plain", "--cache-from", f"type=local,src={root}", str(ctx),
                  capsys=capsys)
    assert rc == 0, out
    assert "warning: cache import" in out and "damaged cache config" in out and "out of range" in out, out


def test_pull_flag_asks_the_registry_for_a_newer_base(registry, pushed_base, tmp_path, capsys):
    store = Store(tmp_path / "s")
    ctx = tmp_path / "ctx3"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {pushed_base}\nRUN cat /etc/release > /seen\n")
    # the store has an older image under the same name; the registry gets a newer one
    busybox_image(store, pushed_base, extra={"etc/release": "old\n"})
    newer = Store(tmp_path / "newer")
    busybox_image(newer, "busybox:2", extra={"etc/release": "new\n"})
    assert cli(newer, "push", "busybox:2", pushed_base, capsys=capsys)[0] == 0

    rc, out = cli(store, "build", "--progress", "plain", "-t", "app:old", str(ctx), capsys=capsys)
    assert rc == 0, out
    rc, out = cli(store, "build", "--progress", "plain", "--pull", "-t", "app:new", str(ctx), capsys=capsys)
    assert rc == 0, out
    from tests.test_build import image_files

    assert image_files(store, "app:old")["seen"][2] == b"old\n"
    assert image_files(store, "app:new")["seen"][2] == b"new\n"
    assert resolve(store, pushed_base)[1].digest == resolve(newer, "busybox:2")[1].digest  # the ref moved on
