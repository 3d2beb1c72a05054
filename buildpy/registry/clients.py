"""One registry client per domain for a command, made when first asked for: tokens and
connections are shared by everything the command does, and a command that reaches no registry
never imports the HTTP client."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from buildpy.registry.settings import Settings

if TYPE_CHECKING:
    from buildpy.registry.auth import Credentials
    from buildpy.registry.client import Client


class Clients:
    """`credentials`: for these domains, these credentials (the Engine API's X-Registry-Auth)
    instead of the ones docker's config.json keeps."""

    def __init__(self, settings: Settings | None = None,
                 credentials: Mapping[str, Credentials] | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._credentials = dict(credentials or {})
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()

    def get(self, domain: str) -> Client:
        from buildpy.registry.client import Client

        with self._lock:
            if domain not in self._clients:
                self._clients[domain] = Client(domain, self.settings, self._credentials.get(domain))
            return self._clients[domain]
