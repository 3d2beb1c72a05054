"""Pull, push, auth and TLS against a real registry (Debian's docker-registry, distribution 2.8,
started on 127.0.0.1 by `tests.registries`), with skopeo as the second opinion on what we push
and the source of what we pull."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from buildpy.cli import main
from tests.imagekit import busybox_image, files_tar, image_from_tars
from tests.registries import CountingProxy

SKOPEO = "/usr/bin/skopeo"


def cli(store: Store, *args: str, capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        import io

        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = main(["--root", str(store.root), *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def docker_config(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def random_layers(n: int, size: int) -> list[bytes]:
    return [files_tar({f"data{i}.bin": os.urandom(size)}) for i in range(n)]


def skopeo(*args: str) -> str:
    if not os.path.exists(SKOPEO):
        pytest.skip("skopeo not installed (Debian package skopeo)")
    proc = subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_push_wipe_pull_gives_the_same_digests_and_skopeo_reads_it(registry, tmp_path, capsys, docker_config,
                                                                   compression):
    a = Store(tmp_path / "a")
    image = image_from_tars(a, random_layers(3, 50_000), "app:1", compression=compression)
    ref = f"{registry.host}/team/app:1"
    rc, out, err = cli(a, "push", "app:1", ref, capsys=capsys)
    assert rc == 0, err
    assert out.strip() == f"{registry.host}/team/app@{image.digest}"
    assert image.digest in err
    assert {d.digest for d in image.layers} | {image.config_descriptor.digest} <= registry.blob_digests()

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert inspected["Digest"] == image.digest
    assert inspected["Layers"] == [d.digest for d in image.layers]
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", f"docker://{ref}",
           f"oci:{tmp_path / 'layout'}:x")  # skopeo reads every blob we pushed and checks it

    b = Store(tmp_path / "b")
    rc, out, err = cli(b, "pull", ref, capsys=capsys)
    assert rc == 0, err
    _, pulled = resolve(b, ref)
    assert pulled.digest == image.digest and pulled.id == image.id
    assert [d.digest for d in pulled.layers] == [d.digest for d in image.layers]
    assert main(["--root", str(b.root), "fsck"]) == 0


@pytest.mark.parametrize("fmt,media_type,layer_type", [
    ("oci", "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ("oci-zstd", "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ("v2s2", "application/vnd.docker.distribution.manifest.v2+json",
     "application/vnd.docker.image.rootfs.diff.tar.gzip"),
])
def test_we_pull_what_skopeo_pushed(registry, tmp_path, capsys, docker_config, fmt, media_type, layer_type):
    a = Store(tmp_path / "a")
    busybox_image(a, "busybox:1")
    rc, _, err = cli(a, "export", "--oci", "-o", str(tmp_path / "layout"), "busybox:1", capsys=capsys)
    assert rc == 0, err
    ref = f"{registry.host}/sk/busybox:{fmt}"
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    name = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    extra = ["--dest-compress-format", "zstd"] if fmt == "oci-zstd" else []
    skopeo("copy", "--dest-tls-verify=false", "--format", fmt.split("-")[0], *extra,
           f"oci:{tmp_path / 'layout'}:{name}", f"docker://{ref}")
    digest = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))["Digest"]

    b = Store(tmp_path / "b")
    rc, _, err = cli(b, "pull", ref, capsys=capsys)
    assert rc == 0, err
    _, image = resolve(b, ref)
    assert image.digest == digest
    assert image.manifest_descriptor.media_type == media_type
    assert [d.media_type for d in image.layers] == [layer_type]
    assert main(["--root", str(b.root), "fsck"]) == 0
    # and it is an image we can build on
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {ref}\nRUN echo built > /built\n")
    rc, _, err = cli(b, "build", "--progress", "plain", "-t", "on-top", str(ctx), capsys=capsys)
    assert rc == 0, err


def test_pull_from_an_index_picks_the_platform(registry, tmp_path, capsys, docker_config):
    a = Store(tmp_path / "a")
    amd = busybox_image(a, None)
    other = image_from_tars(a, random_layers(1, 1000), None)
    from buildpy.cas.image import write_index
    from buildpy.cas.media import Descriptor

    entries = [Descriptor(amd.manifest_descriptor.media_type, amd.digest, amd.manifest_descriptor.size,
                          platform={"os": "linux", "architecture": "amd64"}),
               Descriptor(other.manifest_descriptor.media_type, other.digest, other.manifest_descriptor.size,
                          platform={"os": "linux", "architecture": "arm64"})]
    index = write_index(a, entries)
    a.set_ref("multi:1", index)
    ref = f"{registry.host}/multi:1"
    rc, _, err = cli(a, "push", "multi:1", ref, capsys=capsys)
    assert rc == 0, err
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert len(raw["manifests"]) == 2

    b = Store(tmp_path / "b")
    rc, _, err = cli(b, "pull", "--platform", "linux/arm64", ref, capsys=capsys)
    assert rc == 0, err
    _, image = resolve(b, ref)
    assert image.digest == other.digest
    assert not b.has_blob(amd.layers[0].digest)  # only the chosen platform's blobs
    c = Store(tmp_path / "c")
    rc, _, err = cli(c, "pull", ref, capsys=capsys)
    assert rc == 0, err
    assert resolve(c, ref)[1].digest == amd.digest


# --- pushing only what the registry lacks ----------------------------------------------------------


def _build(store: Store, ctx: Path, tag: str, capsys) -> None:
    rc, _, err = cli(store, "build", "--progress", "plain", "-t", tag, str(ctx), capsys=capsys)
    assert rc == 0, err


def test_second_push_sends_only_the_changed_layer(registry, tmp_path, capsys, docker_config):
    store = Store(tmp_path / "s")
    busybox_image(store)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "big.bin").write_bytes(os.urandom(2 << 20))
    (ctx / "small.txt").write_text("one")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY big.bin /big.bin\nCOPY small.txt /small.txt\n")
    _build(store, ctx, "app:1", capsys)
    with CountingProxy(registry) as proxy:
        rc, _, err = cli(store, "push", "app:1", f"{proxy.host}/app:1", capsys=capsys)
        assert rc == 0, err
        first = proxy.sent
        assert first > 2 << 20  # everything went up the first time
        before = registry.blob_digests()

        (ctx / "small.txt").write_text("two")
        _build(store, ctx, "app:2", capsys)
        proxy.reset()
        rc, _, err = cli(store, "push", "app:2", f"{proxy.host}/app:2", capsys=capsys)
        assert rc == 0, err
        second = proxy.sent
    _, v2 = resolve(store, "app:2")
    new = registry.blob_digests() - before
    assert new == {v2.layers[-1].digest, v2.config_descriptor.digest, v2.digest}  # the manifest is a blob there too
    assert second < 64 << 10, f"second push sent {second} bytes"
    assert err.count("Layer already exists") == 2 and err.count("Pushed") == 2


def test_push_to_another_repository_mounts_instead_of_uploading(registry, tmp_path, capsys, docker_config):
    store = Store(tmp_path / "s")
    image = image_from_tars(store, random_layers(2, 1 << 20), "app:1")
    rc, _, err = cli(store, "push", "app:1", f"{registry.host}/one/app:1", capsys=capsys)
    assert rc == 0, err
    with CountingProxy(registry) as proxy:
        rc, _, err = cli(store, "push", "app:1", f"{proxy.host.replace(proxy.host, registry.host)}/two/app:1",
                         capsys=capsys)
    assert rc == 0, err
    assert err.count("Mounted from one/app") == 3, err
    raw = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/two/app:1"))
    assert raw["Digest"] == image.digest


def test_chunked_upload(registry, tmp_path, capsys, docker_config, monkeypatch):
    from buildpy.registry import client

    monkeypatch.setattr(client, "CHUNKED_ABOVE", 100_000)
    monkeypatch.setattr(client, "UPLOAD_CHUNK", 64 << 10)
    store = Store(tmp_path / "s")
    image = image_from_tars(store, random_layers(1, 400_000), "app:1")
    rc, _, err = cli(store, "push", "app:1", f"{registry.host}/chunked:1", capsys=capsys)
    assert rc == 0, err
    b = Store(tmp_path / "b")
    rc, _, err = cli(b, "pull", f"{registry.host}/chunked:1", capsys=capsys)
    assert rc == 0, err
    assert resolve(b, f"{registry.host}/chunked:1")[1].digest == image.digest


# --- auth ---------------------------------------------------------------------------------------


def test_basic_auth_login_push_logout(auth_registry, tmp_path, capsys, docker_config, monkeypatch):
    store = Store(tmp_path / "s")
    busybox_image(store, "busybox:1")
    ref = f"{auth_registry.host}/private/busybox:1"
    rc, out, err = cli(store, "push", "busybox:1", ref, capsys=capsys)
    assert rc == 1 and "login" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    rc, out, err = cli(store, "login", "-u", auth_registry.username, "--password-stdin", auth_registry.host,
                       capsys=capsys, stdin="wrong-password\n", monkeypatch=monkeypatch)
    assert rc == 1 and "401" in err and "wrong-password" not in out + err
    assert not (docker_config / "config.json").exists()

    rc, out, err = cli(store, "login", "-u", auth_registry.username, "--password-stdin", auth_registry.host,
                       capsys=capsys, stdin=auth_registry.password + "\n", monkeypatch=monkeypatch)
    assert rc == 0 and "Login Succeeded" in out, err
    config = docker_config / "config.json"
    assert f"stored unencrypted in {config}" in err
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert auth_registry.host in json.loads(config.read_text())["auths"]
    assert auth_registry.password not in out + err

    rc, out, err = cli(store, "push", "busybox:1", ref, capsys=capsys)
    assert rc == 0, err
    b = Store(tmp_path / "b")
    rc, out, err = cli(b, "pull", ref, capsys=capsys)
    assert rc == 0, err

    rc, out, err = cli(store, "logout", auth_registry.host, capsys=capsys)
    assert rc == 0 and auth_registry.host not in json.loads(config.read_text())["auths"]
    rc, out, err = cli(Store(tmp_path / "c"), "pull", ref, capsys=capsys)
    assert rc == 1 and "login" in err


def test_credential_helper_is_asked(auth_registry, tmp_path, capsys, docker_config, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    asked = tmp_path / "asked"
    helper = bindir / "docker-credential-testhelper"
    helper.write_text(f"""#!/bin/sh
read server
echo "$1 $server" >> {asked}
if [ "$1" = get ]; then
  printf '{{"ServerURL":"%s","Username":"{auth_registry.username}","Secret":"{auth_registry.password}"}}' "$server"
fi
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"credsStore": "testhelper"}))
    store = Store(tmp_path / "s")
    busybox_image(store, "busybox:1")
    rc, out, err = cli(store, "push", "busybox:1", f"{auth_registry.host}/h/busybox:1", capsys=capsys)
    assert rc == 0, err
    assert asked.read_text().splitlines()[0] == f"get {auth_registry.host}"
    assert auth_registry.password not in out + err


def test_tls_registry_needs_its_ca(tls_registry, tmp_path, capsys, docker_config):
    store = Store(tmp_path / "s")
    image = busybox_image(store, "busybox:1")
    ref = f"{tls_registry.host}/secure/busybox:1"
    rc, out, err = cli(store, "push", "busybox:1", ref, capsys=capsys)
    assert rc == 1 and "certificate" in err and "--ca-cert" in err and "Traceback" not in err, err
    rc = main(["--root", str(store.root), "--ca-cert", str(tls_registry.ca_cert), "push", "busybox:1", ref])
    assert rc == 0, capsys.readouterr().err
    b = Store(tmp_path / "b")
    rc, out, err = cli(b, "pull", "--ca-cert", str(tls_registry.ca_cert), ref, capsys=capsys)
    assert rc == 0, err
    assert resolve(b, ref)[1].digest == image.digest


def test_unreachable_or_unknown_is_one_line(registry, tmp_path, capsys, docker_config):
    store = Store(tmp_path / "s")
    rc, _, err = cli(store, "pull", f"{registry.host}/nothing/here:1", capsys=capsys)
    assert rc == 1 and "MANIFEST_UNKNOWN" in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = cli(store, "pull", "127.0.0.1:1/x:1", capsys=capsys)
    assert rc == 1 and "connection refused" in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = cli(store, "push", "nothing:1", f"{registry.host}/x:1", capsys=capsys)
    assert rc == 1 and "no image nothing:1" in err, err
    assert store.refs() == {}
