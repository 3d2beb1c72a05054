"""References normalised as Docker does (cases from distribution/reference's normalize_test.go),
and `resolve` finding images in a store by name, digest and image ID prefix."""

from __future__ import annotations

import pytest

from buildpy.cas.digest import of_bytes
from buildpy.cas.image import new_config, write_image
from buildpy.cas.reference import InvalidReference, Reference, lookup, parse, refs_named, refs_to, resolve
from buildpy.cas.store import Store, StoreError, canonical_json
from tests.imagekit import files_tar, image_from_tars

D = "sha256:" + "e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"

# input, full normalised, familiar, domain, path
NORMALISED = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36", "docker.io", "library/busybox"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest", "docker.io",
     "library/busybox"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest", "docker.io", "user/app"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest", "docker.io", "library/foo/bar"),
    ("test_com/foo", "docker.io/test_com/foo:latest", "test_com/foo:latest", "docker.io", "test_com/foo"),
    ("host:5000/a/b:tag", "host:5000/a/b:tag", "host:5000/a/b:tag", "host:5000", "a/b"),
    ("example.com/privatebase", "example.com/privatebase:latest", "example.com/privatebase:latest",
     "example.com", "privatebase"),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase:latest",
     "127.0.0.1:8000/private/moonbase:latest", "127.0.0.1:8000", "private/moonbase"),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest", "localhost", "x"),
    ("localhost:5000/x:1", "localhost:5000/x:1", "localhost:5000/x:1", "localhost:5000", "x"),
    ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest", "Foo", "bar"),
    ("LOCALDOMAIN/fooo/bar", "LOCALDOMAIN/fooo/bar:latest", "LOCALDOMAIN/fooo/bar:latest", "LOCALDOMAIN", "fooo/bar"),
    ("[fc00::1]:5000/docker", "[fc00::1]:5000/docker:latest", "[fc00::1]:5000/docker:latest", "[fc00::1]:5000",
     "docker"),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080",
     "foo"),
    ("192.168.0.1:80", "docker.io/library/192.168.0.1:80", "192.168.0.1:80", "docker.io", "library/192.168.0.1"),
    ("docker---rules/dock__er", "docker.io/docker---rules/dock__er:latest", "docker---rules/dock__er:latest",
     "docker.io", "docker---rules/dock__er"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}", "docker.io", "library/busybox"),
    (f"busybox:latest@{D}", f"docker.io/library/busybox:latest@{D}", f"busybox:latest@{D}", "docker.io",
     "library/busybox"),
    (f"gcr.io/library/busybox:1@{D}", f"gcr.io/library/busybox:1@{D}", f"gcr.io/library/busybox:1@{D}", "gcr.io",
     "library/busybox"),
    ("a:" + "x" * 128, "docker.io/library/a:" + "x" * 128, "a:" + "x" * 128, "docker.io", "library/a"),
]


@pytest.mark.parametrize("text,full,familiar,domain,path", NORMALISED)
def test_normalisation_as_docker(text, full, familiar, domain, path):
    ref = parse(text)
    assert (str(ref), ref.name, ref.familiar, ref.domain, ref.path) == (full, full, familiar, domain, path)
    assert parse(full) == ref  # normalising is idempotent


def test_fields():
    ref = parse(f"host:5000/a/b:tag@{D}")
    assert ref == Reference("host:5000", "a/b", "tag", D)
    assert ref.repository == "host:5000/a/b"
    assert parse("busybox").familiar_repository == "busybox"
    assert parse(f"busybox@{D}").tag is None
    assert parse("busybox").with_tag("v2").name == "docker.io/library/busybox:v2"


INVALID = [
    ("", "empty"),
    ("Busybox", "must be lowercase"),
    ("docker/Docker", "must be lowercase"),
    ("docker.io/docker/Docker", "must be lowercase"),
    ("localhost:5000/Foo", "must be lowercase"),
    ("a:" + "x" * 129, "129 characters, at most 128"),
    ("busybox:-x", "invalid tag '-x'"),
    ("busybox:.x", "invalid tag '.x'"),
    ("-docker", "invalid reference format"),
    ("-docker/docker", "invalid reference format"),
    ("docker-/docker", "invalid reference format"),
    ("docker///docker", "invalid reference format"),
    ("dock..er/docker", "invalid reference format"),
    ("dock_.er/docker", "invalid reference format"),
    ("____/____", "invalid reference format"),
    ("docker/", "invalid reference format"),
    ("https://github.com/docker/docker", "invalid reference format"),
    ("[fc00::1]:5000", "invalid reference format"),
    ("fc00::1:5000/debian", "invalid reference format"),
    ("[fe80::1%eth0]:5000/debian", "invalid reference format"),
    ("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "64-byte hexadecimal"),
    ("busybox@sha256:abc", "is not a digest"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("busybox@sha256:" + "A" * 64, "64 lower-case hex"),
    ("busybox@sha256:" + "a" * 63 + "aa", "64 lower-case hex"),
    ("a/" + "b" * 255, "more than 255"),
]


@pytest.mark.parametrize("text,message", INVALID)
def test_invalid_references_are_refused_clearly(text, message):
    with pytest.raises(InvalidReference) as e:
        parse(text)
    assert message in str(e.value)
    assert e.value.user_facing and "\n" not in str(e.value)


def test_valid_names_docker_accepts():
    for text in ["docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "d/docker", "jess/t",
                 "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "a/" + "b" * 253,
                 "[fc00:1:2:3:4:5:6:7]:5000/library/debian", "192.168.0.2:25000/debian"]:
        parse(text)


def test_tag_target_refuses_a_digest():
    with pytest.raises(InvalidReference, match="digest reference"):
        parse(f"busybox@{D}", allow_digest=False)


# resolve


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def _two_images(store: Store):
    a = image_from_tars(store, [files_tar({"a": "one"})], "docker.io/library/one:latest")
    b = image_from_tars(store, [files_tar({"b": "two"})], "localhost:5000/two:v1")
    return a, b


def test_resolve_by_familiar_and_full_name(store):
    a, b = _two_images(store)
    assert resolve(store, "one") == ("docker.io/library/one:latest", a)
    assert resolve(store, "docker.io/library/one:latest")[1] == a
    assert resolve(store, "localhost:5000/two:v1") == ("localhost:5000/two:v1", b)


def test_resolve_by_id_digest_and_prefix(store):
    a, b = _two_images(store)
    hex_id = a.id.partition(":")[2]
    assert resolve(store, a.id)[1] == a
    assert resolve(store, hex_id)[1] == a
    assert resolve(store, hex_id[:12])[1] == a
    assert resolve(store, a.digest)[1] == a  # manifest digest
    assert resolve(store, a.digest.partition(":")[2][:10])[1] == a
    assert resolve(store, f"one@{a.digest}") == ("docker.io/library/one:latest", a)
    assert resolve(store, f"one:whatever@{a.digest}")[1] == a


def test_resolve_refuses_a_digest_under_another_name(store):
    a, _ = _two_images(store)
    with pytest.raises(StoreError, match="no image"):
        resolve(store, f"localhost:5000/two@{a.digest}")


def test_untagged_manifest_is_found_by_digest(store):
    a, _ = _two_images(store)
    store.delete_ref("docker.io/library/one:latest")
    assert resolve(store, a.digest) == (None, a)
    with pytest.raises(StoreError):
        resolve(store, "one")


def test_not_found_names_load_and_pull(store):
    _two_images(store)
    with pytest.raises(StoreError) as e:
        resolve(store, "nothere:1")
    assert "nothere:1" in str(e.value) and "buildpy pull" in str(e.value) and "buildpy load" in str(e.value)
    with pytest.raises(StoreError, match="no image"):
        resolve(store, "sha256:" + "0" * 64)
    with pytest.raises(StoreError, match="no image"):
        resolve(store, "abc")  # 3 hex digits: a name, never a prefix


def _colliding_configs() -> tuple[dict, dict, str]:
    """Two configs whose digests (image IDs) share their first 4 hex digits: found by a
    birthday search (a few hundred tries), the same every run."""
    seen: dict[str, dict] = {}
    for i in range(100_000):
        cfg = new_config(created="2024-01-01T00:00:00Z")
        cfg["config"]["Labels"] = {"n": str(i)}
        prefix = of_bytes(canonical_json(cfg))[7:11]
        if prefix in seen:
            return seen[prefix], cfg, prefix
        seen[prefix] = cfg
    raise AssertionError("no collision")


def test_id_prefix_of_four_digits_and_ambiguity(store):
    cfg1, cfg2, prefix = _colliding_configs()
    one = write_image(store, cfg1, [])
    store.set_ref("docker.io/library/one:latest", one.manifest_descriptor)
    assert resolve(store, prefix) == ("docker.io/library/one:latest", one)  # unique so far
    two = write_image(store, cfg2, [])
    store.set_ref("docker.io/library/two:latest", two.manifest_descriptor)
    with pytest.raises(StoreError, match="ambiguous"):
        resolve(store, prefix)
    assert resolve(store, one.id[:16])[1] == one  # more digits settle it (unless they too collide)


def test_name_wins_over_id_prefix(store):
    a, b = _two_images(store)
    prefix = b.id.partition(":")[2][:6]
    store.set_ref(parse(prefix).name, a.manifest_descriptor)  # a repository named like b's ID
    assert resolve(store, prefix)[1] == a


def test_refs_to(store):
    a, _ = _two_images(store)
    store.set_ref("docker.io/library/copy:latest", a.manifest_descriptor)
    assert refs_to(store, a) == ["docker.io/library/copy:latest", "docker.io/library/one:latest"]


def test_lookup_returns_the_ref_descriptor(store):
    a, _ = _two_images(store)
    name, desc = lookup(store, "one")
    assert name == "docker.io/library/one:latest" and desc.digest == a.digest


def test_refs_named(store):
    a, _ = _two_images(store)
    store.set_ref("docker.io/library/copy:latest", a.manifest_descriptor)
    assert refs_named(store, "one") == ["docker.io/library/one:latest"]
    assert refs_named(store, a.id[7:15]) == ["docker.io/library/copy:latest", "docker.io/library/one:latest"]
    for name in refs_named(store, a.digest):
        store.delete_ref(name)
    with pytest.raises(StoreError, match="no tags to remove"):
        refs_named(store, a.digest)
