"""The image-moving endpoints of `buildpy serve` (pull, push, login, save, load, prune), driven
by the real docker CLI and raw HTTP against a real local docker-registry (tests.registries)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from tests.apiserver import DOCKER, Server, UnixConnection, call, docker, json_lines, needs_docker, refs, serving
from tests.imagekit import files_tar, image_from_tars

pytestmark = needs_docker


@pytest.fixture(autouse=True)
def server_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The servers' own docker config: empty, and apart from the CLI's (tmp/docker-config), so
    credentials reach a registry only through X-Registry-Auth."""
    d = tmp_path / "server-docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "a") as srv:
        yield srv


@pytest.fixture
def empty_server(tmp_path: Path) -> Iterator[Server]:
    """A server on a store holding nothing."""
    with serving(tmp_path / "b", busybox=False) as srv:
        yield srv


def image_id(server: Server, name: str) -> str:
    return resolve(Store(server.root), name)[1].id


def docker_bytes(server: Server, tmp: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The docker CLI with binary stdin/stdout (docker save, docker load)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{server.sock}", DOCKER_CONFIG=str(tmp / "docker-config"), DOCKER_CLI_HINTS="false")
    return subprocess.run([DOCKER, *args], input=stdin, capture_output=True, env=env, timeout=300)


def auth_header(**fields: str) -> dict[str, str]:
    return {"X-Registry-Auth": base64.urlsafe_b64encode(json.dumps(fields).encode()).decode()}


# pull and push with the docker CLI


def test_docker_push_then_pull_into_an_empty_store(server: Server, empty_server: Server, registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/team/app:1"
    assert docker(server, tmp_path, "tag", "busybox", ref).returncode == 0
    r = docker(server, tmp_path, "push", ref)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"The push refers to repository [{registry.host}/team/app]" in r.stdout
    image = resolve(Store(server.root), ref)[1]
    layer = image.layers[0].digest
    assert f"{layer[7:19]}: Pushed" in r.stdout
    assert f"1: digest: {image.digest} size: {image.manifest_descriptor.size}" in r.stdout
    assert {layer, image.config_descriptor.digest} <= registry.blob_digests()
    # the registry holds it now: nothing goes up again
    r = docker(server, tmp_path, "push", ref)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{layer[7:19]}: Layer already exists" in r.stdout

    r = docker(empty_server, tmp_path, "pull", ref)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1: Pulling from team/app" in r.stdout
    assert f"{layer[7:19]}: Pull complete" in r.stdout
    assert f"Digest: {image.digest}" in r.stdout
    assert f"Status: Downloaded newer image for {ref}" in r.stdout
    assert refs(empty_server.root)[ref] == image.digest
    assert image_id(empty_server, ref) == image.id
    r = docker(empty_server, tmp_path, "pull", ref)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Status: Image is up to date for {ref}" in r.stdout
    # nothing there: the daemon's 404, no tag made
    r = docker(empty_server, tmp_path, "pull", f"{registry.host}/team/nothing:1")
    assert r.returncode != 0
    assert "not found" in r.stderr and "Traceback" not in r.stderr
    assert set(refs(empty_server.root)) == {ref}


def test_docker_create_pulls_a_missing_image(server: Server, empty_server: Server, registry, tmp_path: Path) -> None:
    """`docker create`/`docker run` of an image the store lacks: the CLI pulls it through
    POST /images/create after the daemon's "No such image", then creates."""
    ref = f"{registry.host}/run/app:1"
    assert docker(server, tmp_path, "tag", "busybox", ref).returncode == 0
    assert docker(server, tmp_path, "push", ref).returncode == 0
    r = docker(empty_server, tmp_path, "create", "--name", "pulled", ref, "true")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Unable to find image '{ref}' locally" in r.stderr
    assert f"Status: Downloaded newer image for {ref}" in r.stderr
    assert image_id(empty_server, ref) == image_id(server, ref)
    assert docker(empty_server, tmp_path, "rm", "pulled").returncode == 0


def test_pull_stream_shape(server: Server, empty_server: Server, registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/shape/app:2"
    layers = [files_tar({"a.txt": "one"}), files_tar({"b.txt": "two" * 1000})]
    image = image_from_tars(Store(server.root), layers, ref)
    assert docker(server, tmp_path, "push", ref).returncode == 0
    a = call(empty_server.sock, "POST", f"/v1.41/images/create?fromImage={quote(f'{registry.host}/shape/app')}&tag=2")
    assert a.status == 200
    assert a.headers["Content-Type"] == "application/json"
    lines = json_lines(a.body)
    assert lines[0] == {"status": "Pulling from shape/app", "id": "2"}
    short = [d.digest[7:19] for d in image.layers]
    for ident in short:
        mine = [m for m in lines if m.get("id") == ident]
        states = [m["status"] for m in mine]
        assert states[0] == "Pulling fs layer"
        assert "Download complete" in states and states[-1] == "Pull complete"
        assert all(m["progressDetail"] == {} or set(m["progressDetail"]) == {"current", "total"} for m in mine)
    assert [m["id"] for m in lines if m["status"] == "Pull complete"] == short  # in layer order
    assert lines[-2] == {"status": f"Digest: {image.digest}"}
    assert lines[-1] == {"status": f"Status: Downloaded newer image for {ref}"}
    assert not [m for m in lines if "error" in m]
    # by digest: the ref named so
    a = call(empty_server.sock, "POST",
             f"/images/create?fromImage={quote(f'{registry.host}/shape/app')}&tag={image.digest}")
    lines = json_lines(a.body)
    assert lines[-1]["status"] == f"Status: Downloaded newer image for {registry.host}/shape/app@{image.digest}"
    assert "Already exists" in {m["status"] for m in lines}


def test_pull_errors_before_the_stream(empty_server: Server, registry) -> None:
    before = refs(empty_server.root)
    for query, status, text in (
        (f"fromImage={registry.host}/none/such&tag=1", 404, "not found"),
        ("fromImage=Bad/UPPER&tag=1", 400, "invalid"),
        (f"fromImage={registry.host}/x&tag=-bad", 400, "invalid tag"),
        ("fromSrc=-", 501, "docker import"),
    ):
        a = call(empty_server.sock, "POST", f"/v1.41/images/create?{query}")
        assert a.status == status, (query, a.body)
        assert text in a.json()["message"], (query, a.body)
    a = call(empty_server.sock, "POST", f"/v1.41/images/create?fromImage={registry.host}/x&tag=1",
             headers={"X-Registry-Auth": "%%% not base64 %%%"})
    assert a.status == 400 and "X-Registry-Auth" in a.json()["message"]
    # no fromImage is docker import (the body a root filesystem): refused, the connection kept
    conn = UnixConnection(empty_server.sock)
    try:
        assert call(conn, "POST", "/v1.41/images/create?repo=x", body=b"x" * 5000, chunked=True).status == 501
        assert call(conn, "GET", "/_ping").status == 200
    finally:
        conn.close()
    assert refs(empty_server.root) == before


def test_login_and_push_to_an_auth_registry(server: Server, auth_registry, tmp_path: Path) -> None:
    ref = f"{auth_registry.host}/private/app:1"
    assert docker(server, tmp_path, "tag", "busybox", ref).returncode == 0
    # no credentials: the registry's refusal ends the stream, and the CLI fails
    r = docker(server, tmp_path, "push", ref)
    assert r.returncode != 0
    assert "authentication required" in r.stderr and "Traceback" not in r.stderr
    # a wrong password: docker login fails and keeps nothing
    r = subprocess.run([DOCKER, "login", auth_registry.host, "-u", auth_registry.username, "--password-stdin"],
                       input="wrong-password\n", capture_output=True, text=True, timeout=120,
                       env={**_cli_env(server, tmp_path)})
    assert r.returncode != 0
    assert "login to" in r.stderr and "401 Unauthorized" in r.stderr, r.stderr
    config = tmp_path / "docker-config" / "config.json"
    assert auth_registry.host not in (config.read_text() if config.exists() else "")
    # the right one
    r = subprocess.run([DOCKER, "login", auth_registry.host, "-u", auth_registry.username, "--password-stdin"],
                       input=auth_registry.password + "\n", capture_output=True, text=True, timeout=120,
                       env=_cli_env(server, tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Login Succeeded" in r.stdout
    assert auth_registry.host in config.read_text()
    r = docker(server, tmp_path, "push", ref)
    assert r.returncode == 0, r.stdout + r.stderr
    image = resolve(Store(server.root), ref)[1]
    assert f"1: digest: {image.digest}" in r.stdout
    status, _ = auth_registry.get(f"/v2/private/app/manifests/{image.digest}", auth=True,
                                  headers={"Accept": image.manifest_descriptor.media_type})
    assert status == 200
    # the server's own docker config was never written: the credentials came with the requests
    assert not (Path(os.environ["DOCKER_CONFIG"]) / "config.json").exists()


def _cli_env(server: Server, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{server.sock}", DOCKER_CONFIG=str(tmp / "docker-config"), DOCKER_CLI_HINTS="false")
    return env


def test_auth_endpoint_raw(server: Server, auth_registry) -> None:
    body = {"username": auth_registry.username, "password": auth_registry.password,
            "serveraddress": f"http://{auth_registry.host}/v2/"}
    a = call(server.sock, "POST", "/v1.41/auth", body=json.dumps(body).encode())
    assert a.status == 200, a.body
    assert a.json() == {"Status": "Login Succeeded", "IdentityToken": ""}
    a = call(server.sock, "POST", "/v1.41/auth", body=json.dumps({**body, "password": "nope"}).encode())
    assert a.status == 401
    assert auth_registry.host in a.json()["message"]
    for bad in (b"not json", b"[1]", b"{}"):
        a = call(server.sock, "POST", "/v1.41/auth", body=bad)
        assert a.status == 400, bad


def test_push_with_x_registry_auth_raw(server: Server, auth_registry) -> None:
    ref = f"{auth_registry.host}/raw/app"
    assert call(server.sock, "POST", f"/images/busybox/tag?repo={ref}&tag=7").status == 201
    creds = auth_header(username=auth_registry.username, password=auth_registry.password,
                        serveraddress=auth_registry.host)
    a = call(server.sock, "POST", f"/v1.41/images/{ref}/push?tag=7", headers=creds)
    assert a.status == 200
    lines = json_lines(a.body)
    assert lines[0] == {"status": f"The push refers to repository [{ref}]"}
    image = resolve(Store(server.root), f"{ref}:7")[1]
    aux = lines[-1]["aux"]
    assert aux == {"Tag": "7", "Digest": image.digest, "Size": image.manifest_descriptor.size}
    assert lines[-2] == {"status": f"7: digest: {image.digest} size: {image.manifest_descriptor.size}"}
    assert not [m for m in lines if "error" in m]
    # a missing image is the daemon's 404, before any stream
    a = call(server.sock, "POST", f"/v1.41/images/{auth_registry.host}/raw/none/push?tag=1", headers=creds)
    assert a.status == 404
    assert a.json() == {"message": f"An image does not exist locally with the tag: {auth_registry.host}/raw/none"}


# save and load


def test_save_pipe_load_keeps_the_image_id(server: Server, empty_server: Server, tmp_path: Path) -> None:
    saved = docker_bytes(server, tmp_path, "save", "busybox")
    assert saved.returncode == 0, saved.stderr
    with tarfile.open(fileobj=io.BytesIO(saved.stdout)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    loaded = docker_bytes(empty_server, tmp_path, "load", stdin=saved.stdout)
    assert loaded.returncode == 0, loaded.stderr
    assert b"Loaded image: busybox:latest" in loaded.stdout
    assert image_id(empty_server, "busybox") == image_id(server, "busybox")
    r = docker(empty_server, tmp_path, "image", "inspect", "--format", "{{.Id}}", "busybox")
    assert r.stdout.strip() == image_id(server, "busybox")


def test_save_o_load_i_several_images(server: Server, empty_server: Server, tmp_path: Path) -> None:
    image_from_tars(Store(server.root), [files_tar({"x": "other"})], "docker.io/library/other:3")
    out = tmp_path / "f.tar"
    r = docker(server, tmp_path, "save", "-o", str(out), "busybox", "other:3")
    assert r.returncode == 0, r.stderr
    r = docker(empty_server, tmp_path, "load", "-i", str(out))
    assert r.returncode == 0, r.stderr
    assert "Loaded image: busybox:latest" in r.stdout and "Loaded image: other:3" in r.stdout
    for name in ("busybox", "other:3"):
        assert image_id(empty_server, name) == image_id(server, name)
    # GET /images/get?names=… is the same archive
    a = call(server.sock, "GET", "/v1.41/images/get?names=busybox&names=other:3")
    assert a.status == 200 and a.headers["Content-Type"] == "application/x-tar"
    assert a.body == out.read_bytes()
    a = call(server.sock, "GET", "/v1.41/images/nope:1/get")
    assert a.status == 404 and a.json() == {"message": "No such image: nope:1"}


def _hostile_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": ["evil:1"],
                                                           "Layers": ["../escaped.tar"]}]).encode()),
                           ("c.json", b'{"rootfs": {"type": "layers", "diff_ids": []}}'),
                           ("../escaped.tar", b"gotcha")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_load_refuses_a_hostile_archive(server: Server, tmp_path: Path) -> None:
    before = refs(server.root)
    a = call(server.sock, "POST", "/v1.41/images/load?quiet=1", body=_hostile_tar(),
             headers={"Content-Type": "application/x-tar"})
    assert a.status == 400
    message = a.json()["message"]
    assert "outside the archive" in message and str(server.root) not in message
    (tmp_path / "evil.tar").write_bytes(_hostile_tar())
    r = docker(server, tmp_path, "load", "-i", str(tmp_path / "evil.tar"))
    assert r.returncode != 0
    assert "outside the archive" in r.stderr and "Traceback" not in r.stderr
    for body in (b"", b"not a tar at all" * 100):
        a = call(server.sock, "POST", "/v1.41/images/load", body=body)
        assert a.status == 400, body
    assert refs(server.root) == before
    assert not (server.root.parent / "escaped.tar").exists() and not (tmp_path / "escaped.tar").exists()
    assert not [p for p in (server.root / "tmp").iterdir() if p.name.startswith("api-")]


# prune


def test_image_prune(server: Server, tmp_path: Path) -> None:
    store = Store(server.root)
    gone = image_from_tars(store, [files_tar({"big": "x" * 100_000})], "docker.io/library/doomed:1")
    assert docker(server, tmp_path, "rmi", "doomed:1").returncode == 0
    assert store.has_blob(gone.layers[0].digest)
    r = docker(server, tmp_path, "image", "prune", "-f")
    assert r.returncode == 0, r.stderr
    assert f"deleted: {gone.id}" in r.stdout
    assert "Total reclaimed space" in r.stdout
    assert not store.has_blob(gone.layers[0].digest)
    busybox = image_id(server, "busybox")  # tagged: kept
    a = call(server.sock, "POST", "/v1.41/images/prune")
    assert a.json() == {"ImagesDeleted": None, "SpaceReclaimed": 0}
    f = quote(json.dumps({"until": {"1h": True}}))
    assert call(server.sock, "POST", f"/v1.41/images/prune?filters={f}").status == 400
    assert image_id(server, "busybox") == busybox
    # -a: every image no container uses goes
    assert docker(server, tmp_path, "tag", "busybox", "second:1").returncode == 0
    f = quote(json.dumps({"dangling": {"false": True}}))
    a = call(server.sock, "POST", f"/v1.41/images/prune?filters={f}")
    assert a.status == 200
    answer = a.json()
    assert {"Untagged": "busybox:latest"} in answer["ImagesDeleted"]
    assert {"Untagged": "second:1"} in answer["ImagesDeleted"]
    assert {"Deleted": busybox} in answer["ImagesDeleted"]
    assert answer["SpaceReclaimed"] > 0
    assert refs(server.root) == {}


def test_search_is_not_implemented(server: Server) -> None:
    assert call(server.sock, "GET", "/v1.41/images/search?term=x").status == 501
