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

    def filters(self, allowed: tuple[str, ...]) -> dict[str, list[str]]:
        """Docker's `filters` parameter: `{"KEY": {"VALUE": true}}` (or the old `{"KEY":
        ["VALUE"]}`) → {KEY: [VALUE...]}; a key not in `allowed` is a 400, as Docker answers."""
        raw = self.json_value("filters")
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ApiError(400, "invalid filters: not a JSON object")
        out: dict[str, list[str]] = {}
        for key, value in raw.items():
            if key not in allowed:
                raise ApiError(400, f"invalid filter '{key}'")
            if isinstance(value, dict):
                out[key] = [str(k) for k, v in value.items() if v]
            elif isinstance(value, list):
                out[key] = [str(v) for v in value]
            else:
                raise ApiError(400, f"invalid filter '{key}': {value!r}")
        return out


def dangling(filters: dict[str, list[str]], default: bool | None = None) -> bool | None:
    """The `dangling` filter's value (true/1 or false/0); `default` when it is not given."""
    words = [w.strip().lower() for w in filters.get("dangling", [])]
    for w in words:
        if w not in ("true", "1", "false", "0"):
            raise ApiError(400, f"invalid filter 'dangling={w}'")
    return any(w in ("true", "1") for w in words) if words else default


def labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    """The `label` filter: each of KEY or KEY=VALUE holds."""
    for w in wanted:
        key, eq, value = w.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True
