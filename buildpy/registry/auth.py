"""Credentials and the registry auth flows: anonymous, basic, and the bearer-token flow that
a `WWW-Authenticate` challenge starts (distribution's token spec).

Credentials live where docker keeps them, so `docker login` and `buildpy login` share them:
`$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`): `auths[HOST].auth` (base64
`user:password`), `identitytoken` (an OAuth2 refresh token), and credential helpers
(`credsStore`, `credHelpers[HOST]`: the program `docker-credential-NAME` with the verbs get,
store, erase). A secret is never printed or put in an error.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from buildpy.registry.settings import DOCKER_HUB, DOCKER_HUB_API, RegistryError, Settings

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


ANONYMOUS = Credentials()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" | "bearer"
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """`Bearer realm="…",service="…",scope="…"` (and Basic) from a WWW-Authenticate header."""
    out: list[Challenge] = []
    text = header.strip()
    while text:
        m = re.match(r"([A-Za-z]+)\s*", text)
        if not m:
            break
        scheme = m.group(1).lower()
        text = text[m.end():]
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(text)
            if not pm or (pm.group(2) is None and pm.group(3) is None):
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            text = text[pm.end():]
        out.append(Challenge(scheme, params))
        text = text.lstrip(", ")
    return out


def registry_domain(text: str) -> str:
    """The registry a login names, as `docker login` takes it: a host, a URL (scheme and path
    dropped), or nothing (Docker Hub)."""
    text = text.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.split("/", 1)[0]
    if not text or text in ("index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB
    return text


def check(domain: str, creds: Credentials, settings: Settings) -> None:
    """Does the registry accept these credentials? (GET /v2/ with them, as docker login asks);
    raises AuthError when it refuses them, RegistryError when it cannot be asked."""
    from buildpy.registry.client import Client  # the HTTP client only when a login happens

    Client(domain, settings, creds).ping()


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = environ if environ is not None else os.environ
    return Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _auth_key(host: str) -> str:
    return DOCKER_HUB_AUTH_KEY if host in (DOCKER_HUB, DOCKER_HUB_API, "index.docker.io") else host


def _read_config(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise RegistryError(f"cannot read {path}: not a JSON object")
    return obj


def _helper_for(config: dict, key: str) -> str:
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and isinstance(helpers.get(key), str):
        return helpers[key]
    store = config.get("credsStore")
    return store if isinstance(store, str) else ""


def _run_helper(helper: str, verb: str, data: str) -> str:
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, verb], input=data.encode(), capture_output=True, timeout=60)
    except FileNotFoundError:
        raise RegistryError(f"credential helper {program} is configured but not installed") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} {verb}: timed out") from None
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if verb == "get" and "credentials not found" in out.lower():
            return ""
        # the helper's output may name the server, never the secret: we gave it none on get
        detail = (out or proc.stderr.decode(errors="replace").strip()).splitlines()[:1]
        raise RegistryError(f"credential helper {program} {verb} failed: {detail[0] if detail else proc.returncode}")
    return out


def lookup(host: str, environ: Mapping[str, str] | None = None) -> Credentials:
    """The stored credentials for a registry host (anonymous when none)."""
    path, config, key, helper = _where(host, environ)
    if helper:
        out = _run_helper(helper, "get", key)
        if out:
            try:
                obj = json.loads(out)
                user, secret = str(obj.get("Username", "")), str(obj.get("Secret", ""))
            except (ValueError, AttributeError):
                raise RegistryError(f"credential helper docker-credential-{helper} answered no JSON") from None
            if user == "<token>":
                return Credentials(identity_token=secret)
            return Credentials(user, secret)
    auths = config.get("auths") or {}
    entry = auths.get(key) if isinstance(auths, dict) else None
    if entry is None and isinstance(auths, dict):  # docker also accepts a URL form of the key
        for k, v in auths.items():
            if k.split("://", 1)[-1].split("/", 1)[0] == key:
                entry = v
                break
    if not isinstance(entry, dict):
        return ANONYMOUS
    user, password = str(entry.get("username", "")), str(entry.get("password", ""))
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise RegistryError(f"{path}: the auth entry for {key} is not base64 user:password") from None
    return Credentials(user, password, str(entry.get("identitytoken", "")))


def _where(host: str, environ: Mapping[str, str] | None) -> tuple[Path, dict, str, str]:
    """(config.json's path, its contents, the host's key in it, the host's credential helper)."""
    path = config_dir(environ) / "config.json"
    config = _read_config(path)
    key = _auth_key(host)
    return path, config, key, _helper_for(config, key)


def uses_helper(host: str, environ: Mapping[str, str] | None = None) -> bool:
    return bool(_where(host, environ)[3])


def store(host: str, creds: Credentials, environ: Mapping[str, str] | None = None) -> Path:
    """Keep credentials as docker does (a helper when configured, else config.json, 0600)."""
    path, config, key, helper = _where(host, environ)
    if helper:
        _run_helper(helper, "store", json.dumps({"ServerURL": key, "Username": creds.username,
                                                 "Secret": creds.password}))
        return path
    auths = config.setdefault("auths", {})
    entry = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
    if creds.identity_token:
        entry = {"identitytoken": creds.identity_token}
    auths[key] = entry
    _write_config(path, config)
    return path


def erase(host: str, environ: Mapping[str, str] | None = None) -> bool:
    path, config, key, helper = _where(host, environ)
    if helper:
        _run_helper(helper, "erase", key)
        return True
    auths = config.get("auths") or {}
    if key not in auths:
        return False
    del auths[key]
    _write_config(path, config)
    return True


def _write_config(path: Path, config: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent="\t")
        f.write("\n")
    os.replace(tmp, path)
