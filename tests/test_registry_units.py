"""The registry client's small rules, without a registry: hosts and schemes, challenges,
docker's credential file, cache specs."""

from __future__ import annotations

import base64
import json

import pytest

from buildpy.registry import auth
from buildpy.registry.cache import CacheSpecError, parse_spec
from buildpy.registry.settings import Settings, api_host, insecure_from_env, is_loopback


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1:5000", True), ("127.9.9.9", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("localhost", True), ("10.0.0.1:5000", False), ("registry.example:443", False), ("localhostx:1", False),
])
def test_plain_http_only_for_loopback_and_named_hosts(host, loopback):
    assert is_loopback(host) is loopback
    assert Settings().http_allowed(host) is loopback
    assert Settings(insecure=(host,)).http_allowed(host)


def test_insecure_registries_from_the_environment():
    assert insecure_from_env({"BUILDPY_INSECURE_REGISTRIES": "a:5000, b:1 ,"}) == ("a:5000", "b:1")
    assert insecure_from_env({}) == ()


def test_docker_hub_api_host():
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("ghcr.io") == "ghcr.io"


def test_challenges_are_parsed_as_distribution_sends_them():
    [c] = auth.parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/busybox:pull,push"}
    [b] = auth.parse_challenges('Basic realm="basic-realm"')
    assert b.scheme == "basic" and b.params["realm"] == "basic-realm"
    assert auth.parse_challenges('Bearer realm="a\\"b"')[0].params["realm"] == 'a"b'


def test_credentials_from_docker_config(tmp_path):
    env = {"DOCKER_CONFIG": str(tmp_path)}
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colons").decode()},
        "https://reg.example:5000/v2/": {"auth": base64.b64encode(b"u:p").decode()},
        "tok.example": {"identitytoken": "refresh"},
    }}))
    assert auth.lookup("docker.io", env) == auth.Credentials("hub", "pw:with:colons")
    assert auth.lookup("registry-1.docker.io", env).username == "hub"
    assert auth.lookup("reg.example:5000", env) == auth.Credentials("u", "p")
    assert auth.lookup("tok.example", env).identity_token == "refresh"
    assert auth.lookup("other.example", env).anonymous


def test_login_keeps_other_entries_and_logout_removes_one(tmp_path):
    env = {"DOCKER_CONFIG": str(tmp_path / "cfg")}
    auth.store("a.example", auth.Credentials("u1", "p1"), env)
    auth.store("b.example", auth.Credentials("u2", "p2"), env)
    assert auth.lookup("a.example", env).password == "p1"
    assert auth.erase("a.example", env) is True
    assert auth.erase("a.example", env) is False
    assert auth.lookup("a.example", env).anonymous and auth.lookup("b.example", env).username == "u2"
    assert (tmp_path / "cfg" / "config.json").stat().st_mode & 0o777 == 0o600


def test_damaged_docker_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(auth.RegistryError, match="cannot read .*config.json"):
        auth.lookup("a.example", {"DOCKER_CONFIG": str(tmp_path)})


@pytest.mark.parametrize("text,direction,want", [
    ("reg/app:cache", "from", ("registry", "reg/app:cache", "", "min", False)),
    ("type=registry,ref=reg/app:cache,mode=max,cache-mounts=true", "to",
     ("registry", "reg/app:cache", "", "max", True)),
    ("type=local,dest=/tmp/c", "to", ("local", "", "/tmp/c", "min", False)),
    ("type=local,src=/tmp/c", "from", ("local", "", "/tmp/c", "min", False)),
    ("type=registry,ref=r/a:c,image-manifest=true,oci-mediatypes=true", "to", ("registry", "r/a:c", "", "min", False)),
])
def test_cache_specs(text, direction, want):
    spec = parse_spec(text, direction)
    assert (spec.type, spec.ref, spec.path, spec.mode, spec.cache_mounts) == want


@pytest.mark.parametrize("text,direction,says", [
    ("type=gha", "to", "type must be registry or local"),
    ("type=registry,ref=UPPER/Case", "from", "invalid --cache-from"),
    ("type=local,src=/x", "to", "dest= is required"),
    ("type=registry,ref=a/b,cache-mounts=maybe", "to", "cache-mounts must be true or false"),
    ("type=registry,ref", "to", "is not KEY=VALUE"),
])
def test_cache_spec_mistakes(text, direction, says):
    with pytest.raises(CacheSpecError, match=says):
        parse_spec(text, direction)
