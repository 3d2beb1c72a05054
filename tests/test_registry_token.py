"""buildpy's registry client against the bearer-token auth flow of a real registry: Debian's
`docker-registry` (distribution 2.8) with `auth: token:` and the token server of
`tests.tokenauth`, driven through the CLI in-process (`buildpy login / push / pull`)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from buildpy.cas.reference import resolve
from buildpy.cas.store import Store
from buildpy.cli import main
from tests.imagekit import busybox_image, files_tar, image_from_tars
from tests.tokenauth import TokenRegistry

REPO = "team/busybox"


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DOCKER_CONFIG of the test's own, so real credentials are never read or written."""
    d = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    monkeypatch.delenv("BUILDPY_INSECURE_REGISTRIES", raising=False)
    return d


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    busybox_image(s, "busybox:1")
    return s


def run(root: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def login(tr: TokenRegistry, password: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          root: Path) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    return run(root, "login", "-u", tr.username, "--password-stdin", tr.host, capsys=capsys)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_the_registry_wants_a_token_and_takes_the_issuers(token_registry: TokenRegistry) -> None:
    """The fixture itself: /v2/ challenges with our realm; a token with no access is refused on
    a repository, one with pull is let through (404: no such repository yet)."""
    tr = token_registry
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(tr.url + "/v2/", timeout=5)
        raise AssertionError("GET /v2/ without a token was let through")
    except urllib.error.HTTPError as e:
        challenge = e.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer ")
    assert f'realm="{tr.token_server.realm}"' in challenge and 'service="test-registry"' in challenge

    empty = tr.token()
    status, _ = tr.registry.get(f"/v2/{REPO}/tags/list", headers={"Authorization": f"Bearer {empty}"})
    assert status == 401, tr.log_tail()
    pull = tr.token(f"repository:{REPO}:pull")
    status, body = tr.registry.get(f"/v2/{REPO}/tags/list", headers={"Authorization": f"Bearer {pull}"})
    assert status == 404 and b"NAME_UNKNOWN" in body, (status, body, tr.log_tail())


def test_push_without_login_fails_with_one_error_line(token_registry: TokenRegistry, store: Store,
                                                       docker_config: Path, capsys) -> None:
    tr = token_registry
    rc, out, err = run(store.root, "push", "busybox:1", f"{tr.host}/{REPO}:1", capsys=capsys)
    assert rc == 1, (out, err)
    assert "Traceback" not in out + err
    errors = error_lines(err)
    assert len(errors) == 1, err
    text = errors[0].lower()
    assert any(w in text for w in ("401", "unauthorized", "denied", "login")), errors[0]
    # the client did go to the token server, anonymously, and got a token with no access
    assert tr.token_server.requests, "the token server was never asked"
    assert all(r.user is None and not r.header("Authorization") for r in tr.token_server.requests)
    assert not tr.registry.blob_digests()


def test_login_then_push_and_pull_round_trip(token_registry: TokenRegistry, store: Store, docker_config: Path,
                                            tmp_path: Path, monkeypatch, capsys) -> None:
    tr = token_registry
    rc, out, err = login(tr, tr.password, monkeypatch, capsys, store.root)
    assert rc == 0, err
    assert "Login Succeeded" in out
    config = json.loads((docker_config / "config.json").read_text())
    assert base64.b64decode(config["auths"][tr.host]["auth"]).decode() == f"{tr.username}:{tr.password}"

    tr.token_server.reset()
    ref = f"{tr.host}/{REPO}:1"
    rc, out, err = run(store.root, "push", "busybox:1", ref, capsys=capsys)
    assert rc == 0, f"{err}\n--- registry log ---\n{tr.log_tail()}"
    pushed = resolve(store, "busybox:1")[1]
    assert f"@{pushed.digest}" in out
    assert pushed.digest in tr.registry.blob_digests()  # distribution keeps manifests as blobs too

    requests = tr.token_server.requests
    assert requests
    assert all(r.header("Authorization").startswith("Basic ") for r in requests), \
        [(r.path, r.header("Authorization")[:6]) for r in requests]
    assert all(r.user == tr.username and r.status == 200 for r in requests)
    assert any(f"repository:{REPO}:pull,push" in r.scopes for r in requests), [r.path for r in requests]
    assert all(r.service == "test-registry" for r in requests)

    fresh = Store(tmp_path / "fresh")
    rc, out, err = run(fresh.root, "pull", ref, capsys=capsys)
    assert rc == 0, f"{err}\n--- registry log ---\n{tr.log_tail()}"
    assert resolve(fresh, ref)[1].digest == pushed.digest
    assert any(r.scopes == (f"repository:{REPO}:pull",) for r in tr.token_server.requests)


def test_one_push_asks_for_each_token_once(token_registry: TokenRegistry, store: Store, docker_config: Path,
                                           monkeypatch, capsys) -> None:
    """Tokens are fetched once per scope and reused, not once per blob request nor per worker.
    The token server answers after 0.3 s, as a remote issuer may, so that workers overlap."""
    tr = token_registry
    assert login(tr, tr.password, monkeypatch, capsys, store.root)[0] == 0
    tr.token_server.reset()
    tr.token_server.delay = 0.3
    rc, _, err = run(store.root, "push", "busybox:1", f"{tr.host}/{REPO}:1", capsys=capsys)
    assert rc == 0, err
    scopes = [r.scopes for r in tr.token_server.requests]
    assert 1 <= len(scopes) <= 3, scopes
    assert len(scopes) == len(set(scopes)), f"a scope's token was fetched more than once: {scopes}"


def test_token_requests_do_not_grow_with_the_blobs(token_registry: TokenRegistry, docker_config: Path,
                                                   tmp_path: Path, monkeypatch, capsys) -> None:
    """Nine blobs mean some thirty registry requests (HEAD, POST, PUT each), four at once; one
    token is fetched and reused by all of them."""
    tr = token_registry
    many = Store(tmp_path / "many")
    image_from_tars(many, [files_tar({f"f{i}.txt": f"layer {i}\n" * 1000}) for i in range(8)], "many:1")
    assert login(tr, tr.password, monkeypatch, capsys, many.root)[0] == 0
    tr.token_server.reset()
    rc, _, err = run(many.root, "push", "many:1", f"{tr.host}/team/many:1", capsys=capsys)
    assert rc == 0, err
    assert len(tr.registry.blob_digests()) == 9 + 1  # 8 layers, the config, and the manifest
    scopes = [r.scopes for r in tr.token_server.requests]
    # one token serves the whole push: the HEADs ask with the push scope, the workers share it
    assert scopes == [("repository:team/many:pull,push",)], scopes


def test_login_with_a_wrong_password_fails_without_showing_it(token_registry: TokenRegistry, store: Store,
                                                              docker_config: Path, monkeypatch, capsys) -> None:
    tr = token_registry
    wrong = "not-the-pw-7f3a"
    rc, out, err = login(tr, wrong, monkeypatch, capsys, store.root)
    assert rc == 1, (out, err)
    assert "Traceback" not in out + err
    assert len(error_lines(err)) == 1, err
    assert "Login Succeeded" not in out
    basic = base64.b64encode(f"{tr.username}:{wrong}".encode()).decode()
    assert wrong not in out + err and basic not in out + err
    assert any(r.status == 401 for r in tr.token_server.requests)
    assert not (docker_config / "config.json").exists() or \
        wrong not in (docker_config / "config.json").read_text()
