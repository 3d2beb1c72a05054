"""The endpoint table. Each area module (`system`, `images`, `build`, `containers`, `volumes`)
registers its endpoints with `@route(METHOD, PATTERN)`; an endpoint is a function of the
exchange (the request handler: body in, answer out), the query, and the pattern's groups."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

from buildpy.api.errors import ApiError

Endpoint = Callable[..., None]

_ROUTES: list[tuple[str, re.Pattern[str], Endpoint]] = []


def route(method: str, pattern: str) -> Callable[[Endpoint], Endpoint]:
    def add(fn: Endpoint) -> Endpoint:
        _ROUTES.append((method, re.compile(pattern), fn))
        return fn

    return add


def find(method: str, path: str) -> tuple[Endpoint, tuple[str, ...]] | None:
    """The endpoint for METHOD PATH (HEAD is served as GET) and its path parameters."""
    for want, pattern, fn in _ROUTES:
        if want != method and not (want == "GET" and method == "HEAD"):
            continue
        m = pattern.fullmatch(path)
        if m:
            return fn, tuple(unquote(g) for g in m.groups())
    return None


class Query:
    """A request's query string: `one("t")` the last value, `all("t")` each, `flag("rm")` a
    boolean as Docker reads one, `json_object("buildargs")` a JSON object parameter."""

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self._values = parse_qs(raw, keep_blank_values=True)

    def one(self, name: str, default: str = "") -> str:
        values = self._values.get(name)
        return values[-1] if values else default

    def all(self, name: str) -> list[str]:
        return list(self._values.get(name, []))

    def has(self, name: str) -> bool:
        return name in self._values

    def flag(self, name: str, default: bool = False) -> bool:
        if name not in self._values:
            return default
        return self.one(name).strip().lower() not in ("", "0", "no", "false", "none")  # Docker's boolValue

    def integer(self, name: str, default: int | None = None) -> int | None:
        text = self.one(name).strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            raise ApiError(400, f"invalid {name}: {text!r} is not a number") from None

    def json_value(self, name: str) -> Any:
        text = self.one(name)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise ApiError(400, f"invalid {name}: not JSON") from None

    def json_object(self, name: str) -> dict[str, Any]:
        value = self.json_value(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ApiError(400, f"invalid {name}: not a JSON object")
        return value
