"""What a user says about reaching registries (hosts allowed plain http, extra CA files,
timeouts), and the names of Docker Hub: light to import, so a command that may never reach a
registry does not pay for the HTTP client (urllib3 costs some 90 ms to import)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
CERTS_D = Path("/etc/docker/certs.d")


class RegistryError(Exception):
    """A registry could not be reached, refused us, or answered something we will not take."""

    user_facing = True


class AuthError(RegistryError):
    """The registry refused our credentials (or the lack of them): 401 or 403."""


class NotFound(RegistryError):
    """The registry has no such repository, manifest or blob: 404."""


def api_host(domain: str) -> str:
    """The host to talk to for a reference's domain (Docker Hub's API lives elsewhere)."""
    return DOCKER_HUB_API if domain in (DOCKER_HUB, "index.docker.io") else domain


def insecure_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    text = (environ if environ is not None else os.environ).get("BUILDPY_INSECURE_REGISTRIES", "")
    return tuple(h.strip() for h in text.split(",") if h.strip())


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """What a user says about reaching registries: hosts allowed plain http, extra CA files,
    timeouts (seconds)."""

    insecure: tuple[str, ...] = ()
    ca_certs: tuple[str, ...] = ()
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    certs_d: Path = CERTS_D

    def http_allowed(self, host: str) -> bool:
        return is_loopback(host) or host in self.insecure

    @classmethod
    def from_env(cls, insecure: Iterable[str] = (), ca_certs: Iterable[str] = ()) -> Settings:
        timeout = float(os.environ.get("BUILDPY_REGISTRY_TIMEOUT", "0") or 0)
        extra = {"read_timeout": timeout} if timeout > 0 else {}
        return cls(tuple(insecure) + insecure_from_env(), tuple(ca_certs), **extra)
