"""The registry fixtures themselves: the real docker-registry (plain, basic auth, TLS) comes up,
stores what skopeo pushes and answers as configured; BadRegistry serves an image and each of its
faults does what it says."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.badregistry import BLOB_UNKNOWN, MANIFEST_UNKNOWN, OCI_MANIFEST, TOKEN_REALM, BadRegistry, image_data
from tests.imagekit import files_tar
from tests.registries import CountingProxy, Registry, basic_auth, push_with_skopeo, write_oci_layout


@pytest.fixture(scope="module")
def image() -> tuple[dict[str, bytes], dict[str, tuple[str, bytes]], str]:
    return image_data([files_tar({"hello.txt": "hi"}), files_tar({"etc/other.txt": "x" * 5000})])


def _layer_digests(manifest: bytes) -> list[str]:
    return [layer["digest"] for layer in json.loads(manifest)["layers"]]


# --- the real registry -------------------------------------------------------------------------

def test_registry_stores_a_skopeo_push(registry: Registry, image, tmp_path: Path) -> None:
    assert registry.get("/v2/") == (200, b"{}")
    assert registry.storage_bytes() == 0
    assert registry.blob_digests() == set()
    blobs, manifests, digest = image
    layout = write_oci_layout(tmp_path / "layout", blobs, manifests)
    push_with_skopeo(f"oci:{layout}:latest", f"docker://{registry.host}/test/img:latest", format="oci")
    layers = _layer_digests(manifests["latest"][1])
    assert set(layers) <= registry.blob_digests()
    assert set(blobs) | {digest} == registry.blob_digests()  # layers, config and the manifest
    assert registry.storage_bytes() == sum(map(len, blobs.values())) + len(manifests["latest"][1])
    status, body = registry.get("/v2/test/img/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert status == 200 and hashlib.sha256(body).hexdigest() == digest.removeprefix("sha256:")


def test_counting_proxy_counts_both_ways(auth_registry: Registry, image, tmp_path: Path) -> None:
    blobs, manifests, digest = image
    layout = write_oci_layout(tmp_path / "layout", blobs, manifests)
    with CountingProxy(auth_registry) as proxy:
        req = urllib.request.Request(f"http://{proxy.host}/v2/",
                                     headers={"Authorization": basic_auth("alice", "s3cret-pw")})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b"{}"
        assert proxy.sent > len("GET /v2/ HTTP/1.1\r\n")
        assert proxy.received > 2
        proxy.reset()
        assert (proxy.sent, proxy.received) == (0, 0)
        push_with_skopeo(f"oci:{layout}:latest", f"docker://{proxy.host}/p:1", format="v2s2",
                         extra=["--dest-creds", "alice:s3cret-pw"])
        assert proxy.sent > sum(map(len, blobs.values()))
        assert auth_registry.storage_bytes() >= sum(map(len, blobs.values()))


def test_auth_registry_wants_basic_auth(auth_registry: Registry) -> None:
    status, _ = auth_registry.get("/v2/")
    assert status == 401
    assert auth_registry.get("/v2/", auth=True)[0] == 200
    req = urllib.request.Request(auth_registry.url + "/v2/",
                                 headers={"Authorization": basic_auth("alice", "wrong")})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 401
    assert e.value.headers["WWW-Authenticate"].startswith('Basic realm="basic-realm"')


def test_tls_registry_needs_its_ca(tls_registry: Registry, image, tmp_path: Path) -> None:
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.ca_cert is not None and tls_registry.ca_cert.is_file()
    assert tls_registry.get("/v2/") == (200, b"{}")
    localhost = tls_registry.url.replace("127.0.0.1", "localhost")
    with urllib.request.urlopen(localhost + "/v2/", timeout=5, context=tls_registry.ssl_context()) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.URLError) as e:
        urllib.request.urlopen(tls_registry.url + "/v2/", timeout=5, context=ssl.create_default_context())
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    blobs, manifests, digest = image
    layout = write_oci_layout(tmp_path / "layout", blobs, manifests)
    push_with_skopeo(f"oci:{layout}:latest", f"docker://{tls_registry.host}/t:1", tls_verify=True,
                     extra=["--dest-cert-dir", str(tls_registry.cert_dir)])
    assert digest in tls_registry.blob_digests()
    with pytest.raises(RuntimeError, match="certificate"):
        push_with_skopeo(f"oci:{layout}:latest", f"docker://{tls_registry.host}/t:2", tls_verify=True)


# --- BadRegistry -------------------------------------------------------------------------------

def _get(host: str, path: str, headers: dict[str, str] | None = None, method: str = "GET",
         timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_bad_registry_serves_the_image(image) -> None:
    blobs, manifests, digest = image
    with BadRegistry(blobs, manifests) as bad:
        assert _get(bad.host, "/v2/")[0] == 200
        media_type, manifest = manifests["latest"]
        for ref in ("latest", digest):
            status, headers, body = _get(bad.host, f"/v2/some/deep/name/manifests/{ref}")
            assert (status, body) == (200, manifest)
            assert headers["content-type"] == media_type == OCI_MANIFEST
            assert headers["docker-content-digest"] == digest
        status, headers, body = _get(bad.host, "/v2/x/manifests/latest", method="HEAD")
        assert (status, body, headers["content-length"]) == (200, b"", str(len(manifest)))
        status, _, body = _get(bad.host, "/v2/x/manifests/nope")
        assert (status, json.loads(body)) == (404, MANIFEST_UNKNOWN)
        for d, data in blobs.items():
            status, headers, body = _get(bad.host, f"/v2/x/blobs/{d}")
            assert (status, body, headers["accept-ranges"]) == (200, data, "bytes")
        d, data = next(iter(blobs.items()))
        status, headers, body = _get(bad.host, f"/v2/x/blobs/{d}", {"Range": "bytes=10-"})
        assert (status, body) == (206, data[10:])
        assert headers["content-range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
        status, _, body = _get(bad.host, "/v2/x/blobs/sha256:" + "0" * 64)
        assert (status, json.loads(body)) == (404, BLOB_UNKNOWN)
        assert ("GET", "/v2/", ) == bad.requests[0][:2]
        assert len(bad.requests) == 6 + len(blobs) + 1


def test_bad_registry_body_faults(image) -> None:
    blobs, manifests, digest = image
    d, data = max(blobs.items(), key=lambda kv: len(kv[1]))
    blob = f"/v2/x/blobs/{d}"
    with BadRegistry(blobs, manifests, fault="wrong-digest") as bad:
        status, _, body = _get(bad.host, blob)
        assert status == 200 and len(body) == len(data) and body != data

        bad.fault = "truncated"
        for _ in range(2):
            with pytest.raises(http.client.IncompleteRead) as e:
                _get(bad.host, blob)
            assert len(e.value.partial) == len(data) // 2
        with pytest.raises(http.client.IncompleteRead):
            _get(bad.host, blob, {"Range": "bytes=100-"})

        bad.fault = "truncated-once"
        with pytest.raises(http.client.IncompleteRead):
            _get(bad.host, blob)
        assert _get(bad.host, blob)[2] == data

        bad.fault = "bigger-manifest"
        status, headers, body = _get(bad.host, "/v2/x/manifests/latest")
        assert len(body) == len(manifests["latest"][1]) + 5 * 1024 * 1024 == int(headers["content-length"])
        assert body.startswith(manifests["latest"][1])

        bad.fault = "bigger-blob"
        status, headers, body = _get(bad.host, blob)
        assert body[: len(data)] == data and len(body) == len(data) + 1024 == int(headers["content-length"])

        bad.fault = "slow"
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            _get(bad.host, blob, timeout=0.5)
        assert time.monotonic() - start < 5

        with pytest.raises(ValueError):
            bad.fault = "no-such-fault"


def test_bad_registry_status_faults(image) -> None:
    blobs, manifests, digest = image
    d = next(iter(blobs))
    with BadRegistry(blobs, manifests, fault="500-then-ok") as bad:
        assert _get(bad.host, "/v2/x/manifests/latest")[0] == 500
        assert _get(bad.host, "/v2/x/manifests/latest")[0] == 200
        assert _get(bad.host, f"/v2/x/blobs/{d}")[0] == 500
        assert _get(bad.host, f"/v2/x/blobs/{d}")[0] == 200

        bad.fault = "429-then-ok"
        status, headers, _ = _get(bad.host, "/v2/x/manifests/latest")
        assert (status, headers["retry-after"]) == (429, "1")
        assert _get(bad.host, "/v2/x/manifests/latest")[0] == 200

        bad.fault = "always-500"
        assert _get(bad.host, "/v2/")[0] == 200
        for _ in range(2):
            status, _, body = _get(bad.host, "/v2/x/manifests/latest")
            assert status == 500 and json.loads(body)["errors"][0]["code"] == "UNKNOWN"

        bad.fault = "401-no-token"
        for path in ("/v2/", "/v2/x/manifests/latest", f"/v2/x/blobs/{d}"):
            status, headers, _ = _get(bad.host, path)
            assert status == 401
            assert headers["www-authenticate"] == f'Bearer realm="{TOKEN_REALM}",service="bad"'

        bad.fault = "401-no-challenge"
        status, headers, _ = _get(bad.host, "/v2/")
        assert status == 401 and "www-authenticate" not in headers


def test_bad_registry_redirects_blobs_to_another_host(image) -> None:
    blobs, manifests, digest = image
    d, data = next(iter(blobs.items()))
    with BadRegistry(blobs, manifests, fault="redirect-blobs") as bad:
        status, headers, _ = _get(bad.host, f"/v2/x/blobs/{d}", {"Authorization": "Bearer secret"})
        assert status == 307
        assert headers["location"] == f"http://localhost:{bad.redirect_port}/blobdata/{d}"
        assert bad.requests[-1][2]["Authorization"] == "Bearer secret"
        # urllib follows the redirect, and drops no header itself: the second server records them
        req = urllib.request.Request(f"http://{bad.host}/v2/x/blobs/{d}", headers={"X-Probe": "1"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.read() == data
        method, path, seen = bad.redirect_requests[-1]
        assert (method, path, seen["Host"]) == ("GET", f"/blobdata/{d}", bad.redirect_host)
        assert seen["X-Probe"] == "1"
