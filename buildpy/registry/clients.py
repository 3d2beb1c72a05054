"""One registry client per domain for a command, made when first asked for: tokens and
connections are shared by everything the command does, and a command that reaches no registry
never imports the HTTP client."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from buildpy.registry.settings import Settings

if TYPE_CHECKING:
    from buildpy.registry.client import Client


class Clients:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._clients: dict[str, Client] = {}
        self._lock = threading.Lock()

    def get(self, domain: str) -> Client:
        from buildpy.registry.client import Client

        with self._lock:
            if domain not in self._clients:
                self._clients[domain] = Client(domain, self.settings)
            return self._clients[domain]
