"""A misbehaving registry (tests.badregistry, a small server on loopback): each fault gives the
right outcome — a retry that succeeds, a resumed download, or a one-line error — and leaves the
store as it was: no blob with wrong content, no ref to a half-pulled image."""

from __future__ import annotations

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from buildpy.cli import main
from buildpy.registry import transport
from buildpy.registry.auth import Challenge, Credentials
from buildpy.registry.client import Client
from buildpy.registry.pull import Clients, pull
from buildpy.registry.settings import RegistryError, Settings
from tests.badregistry import BadRegistry, image_data
from tests.imagekit import files_tar


@pytest.fixture(scope="module")
def image():
    import os

    return image_data([files_tar({"a.bin": os.urandom(300_000)}), files_tar({"b.txt": "b" * 5000})])


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(transport, "BACKOFF", (0.01, 0.02, 0.04, 0.08))
    monkeypatch.setattr(transport, "RETRY_AFTER_MAX", 0.05)


def layer_digests(image) -> list[str]:  # noqa: ANN001
    blobs, _, _ = image
    return [d for d in blobs if len(blobs[d]) > 2000]


def attempt(tmp_path, image, fault: str, settings: Settings | None = None):  # noqa: ANN001, ANN201
    blobs, manifests, digest = image
    store = Store(tmp_path / "store")
    with BadRegistry(blobs, manifests, fault) as reg:
        try:
            name, img = pull(store, f"{reg.host}/bad/app:latest", Clients(settings or Settings()))
            return store, reg, img, None
        except RegistryError as e:
            return store, reg, None, e


def assert_intact_and_empty(store: Store, image) -> None:  # noqa: ANN001
    assert store.refs() == {}
    assert not any(store.has_blob(d) for d in layer_digests(image))
    assert main(["--root", str(store.root), "fsck"]) == 0


@pytest.mark.parametrize("fault", ["none", "500-then-ok", "429-then-ok", "truncated-once"])
def test_passing_trouble_is_retried_or_resumed(tmp_path, image, fault):
    store, reg, img, error = attempt(tmp_path, image, fault)
    assert error is None, error
    assert img.digest == image[2]
    assert all(store.has_blob(d) for d in layer_digests(image))
    if fault == "truncated-once":  # resumed where it stopped, not started over
        ranges = [h.get("Range") for m, p, h in reg.requests if m == "GET" and "/blobs/" in p and h.get("Range")]
        assert ranges and all(r.startswith("bytes=") and r != "bytes=0-" for r in ranges)


@pytest.mark.parametrize("fault,says", [
    ("wrong-digest", "does not match its digest"),
    ("truncated", "bytes arrived"),
    ("always-500", "internal trouble"),
    ("401-no-token", "token from http://127.0.0.1:1"),
    ("401-no-challenge", "no way to authenticate"),
    ("bigger-manifest", "more than a manifest may have"),
    ("bigger-blob", "announce"),
])
def test_bad_answers_are_errors_and_store_nothing(tmp_path, image, fault, says):
    store, reg, img, error = attempt(tmp_path, image, fault)
    assert error is not None and says in str(error), error
    assert "\n" not in str(error)
    assert_intact_and_empty(store, image)


def test_slow_registry_times_out(tmp_path, image):
    store, reg, img, error = attempt(tmp_path, image, "slow", Settings(read_timeout=0.3, connect_timeout=1))
    assert error is not None and "timed out" in str(error), error
    assert_intact_and_empty(store, image)


def test_redirected_blobs_are_fetched_without_our_credentials(tmp_path, image):
    blobs, manifests, digest = image
    store = Store(tmp_path / "store")
    with BadRegistry(blobs, manifests, "redirect-blobs") as reg:
        client = Client(reg.host, Settings(), Credentials("alice", "s3cret-pw"))
        client._challenge = Challenge("basic", {})  # as after a 401: every request carries credentials
        desc, _ = client.get_manifest("bad/app", "latest")
        import json

        from buildpy.cas.media import Descriptor

        layers = [Descriptor.from_json(d) for d in json.loads(manifests["latest"][1])["layers"]]
        for d in layers:
            client.fetch_blob("bad/app", d, store)
        assert all(store.has_blob(d.digest) for d in layers)
        assert any("Authorization" in h for m, p, h in reg.requests)  # the registry got them
        assert reg.redirect_requests and not any("Authorization" in h for m, p, h in reg.redirect_requests)


def test_cli_error_is_one_line(tmp_path, image, capsys):
    blobs, manifests, digest = image
    with BadRegistry(blobs, manifests, "wrong-digest") as reg:
        rc = main(["--root", str(tmp_path / "s"), "pull", f"{reg.host}/bad/app:latest"])
    err = capsys.readouterr().err
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not match its digest" in errors[0] and "Traceback" not in err


def test_build_from_a_bad_registry_fails_cleanly(tmp_path, image, capsys):
    blobs, manifests, digest = image
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with BadRegistry(blobs, manifests, "wrong-digest") as reg:
        (ctx / "Dockerfile").write_text(f"FROM {reg.host}/bad/app:latest\nRUN true\n")
        rc = main(["--root", str(tmp_path / "s"), "build", "--progress", "plain", str(ctx)])
    err = capsys.readouterr().err
    assert rc == 1 and "does not match its digest" in err and "Traceback" not in err, err
    store = Store(tmp_path / "s")
    assert not any(store.has_blob(d) for d in layer_digests(image))
    _ = resolve  # the store has no image of it
    assert store.refs() == {}
