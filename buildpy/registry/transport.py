"""How buildpy reaches a registry host: the scheme (https, verified; plain http only where
Docker allows it), TLS trust (the system store, `--ca-cert`, `/etc/docker/certs.d/HOST/ca.crt`),
pooled connections (urllib3), timeouts, and retrying what a registry may answer in passing
(429, 5xx, a dropped connection) with a bounded backoff.

Plain http is allowed for 127.0.0.0/8, ::1, localhost and the `--insecure-registry` hosts (env
`BUILDPY_INSECURE_REGISTRIES`), as Docker allows it; https is still tried first, and a host that
answers TLS with a bad certificate is an error, never a silent downgrade.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, ProtocolError, SSLError

from buildpy.registry.settings import RegistryError, Settings

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRIES = 4  # attempts after the first
BACKOFF = (0.25, 0.5, 1.0, 2.0)
RETRY_AFTER_MAX = 10.0


@dataclass
class Response:
    """A registry's answer: status, headers (lower-case names), and the body still to read
    (`raw`, a urllib3 response) or already read (`data`)."""

    status: int
    headers: dict[str, str]
    raw: urllib3.BaseHTTPResponse
    url: str

    def read(self, limit: int) -> bytes:
        """The whole body, refusing one longer than `limit` bytes."""
        data = self.raw.read(limit + 1, decode_content=True)
        if len(data) > limit:
            self.release()
            raise RegistryError(f"{self.url}: answer larger than {limit} bytes")
        self.release()
        return data

    def release(self) -> None:
        self.raw.drain_conn()
        self.raw.release_conn()


@dataclass
class Transport:
    """Connections to one registry host, shared by threads."""

    host: str
    settings: Settings = field(default_factory=Settings)
    scheme: str = ""
    _pool: urllib3.PoolManager | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"{self._scheme()}://{self.host}"

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        for ca in self.settings.ca_certs:
            try:
                ctx.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"cannot read CA certificate {ca}: {e}") from None
        certs = self.settings.certs_d / self.host
        if certs.is_dir():
            for ca in sorted(certs.glob("*.crt")):
                try:
                    ctx.load_verify_locations(cafile=str(ca))
                except (OSError, ssl.SSLError) as e:
                    raise RegistryError(f"cannot read CA certificate {ca}: {e}") from None
        return ctx

    def pool(self) -> urllib3.PoolManager:
        with self._lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(
                    num_pools=4, maxsize=16, block=False, ssl_context=self._ssl_context(),
                    timeout=urllib3.Timeout(connect=self.settings.connect_timeout,
                                            read=self.settings.read_timeout),
                    retries=False,
                )
            return self._pool

    def _scheme(self) -> str:
        with self._lock:
            if self.scheme:
                return self.scheme
        scheme = "https"
        if self.settings.http_allowed(self.host):
            scheme = self._probe()
        with self._lock:
            self.scheme = scheme
        return scheme

    def _probe(self) -> str:
        """https if the host speaks TLS, else http (only asked for hosts allowed plain http)."""
        try:
            r = self.pool().request("GET", f"https://{self.host}/v2/", preload_content=False, redirect=False,
                                    timeout=urllib3.Timeout(connect=5.0, read=10.0))
            r.drain_conn()
            r.release_conn()
            return "https"
        except (MaxRetryError, SSLError, ProtocolError, OSError, Urllib3Error) as e:
            reason = e.reason if isinstance(e, MaxRetryError) else e
            if isinstance(reason, SSLError) and _is_certificate_error(reason):
                raise RegistryError(f"{self.host}: TLS certificate not trusted ({_short(reason)}); "
                                    "give its CA with --ca-cert") from None
            return "http"

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: object = None, retry: bool = True, what: str = "") -> Response:
        """One request, retried on 429/5xx and on dropped connections when `retry` (the body, if
        any, must then be bytes or None). Redirects are not followed here."""
        if url.startswith("/"):
            url = self.base + url
        attempt = 0
        while True:
            try:
                raw = self.pool().request(method, url, headers=dict(headers or {}), body=body,
                                          preload_content=False, redirect=False, retries=False)
            except (MaxRetryError, ProtocolError, SSLError, OSError, Urllib3Error) as e:
                reason = e.reason if isinstance(e, MaxRetryError) else e
                if isinstance(reason, SSLError) and _is_certificate_error(reason):
                    raise RegistryError(f"{_host_of(url)}: TLS certificate not trusted ({_short(reason)}); "
                                        "give its CA with --ca-cert") from None
                if retry and attempt < RETRIES:
                    time.sleep(BACKOFF[attempt])
                    attempt += 1
                    continue
                raise RegistryError(f"{what or method + ' ' + url}: {_short(reason)}") from None
            response = Response(raw.status, {k.lower(): v for k, v in raw.headers.items()}, raw, url)
            if retry and raw.status in RETRY_STATUSES and attempt < RETRIES:
                delay = _retry_after(response.headers.get("retry-after"), BACKOFF[attempt])
                response.release()
                time.sleep(delay)
                attempt += 1
                continue
            return response


def _retry_after(value: str | None, default: float) -> float:
    if value:
        try:
            return min(max(float(value), 0.0), RETRY_AFTER_MAX)
        except ValueError:
            pass
    return default


def _host_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _is_certificate_error(e: BaseException) -> bool:
    text = str(e)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text or "hostname" in text


def _short(e: object) -> str:
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        start = text.find("certificate verify failed")
        return text[start:].split(")")[0] if start >= 0 else "certificate verify failed"
    if "Connection refused" in text:
        return "connection refused"
    if "Failed to resolve" in text or "Name or service not known" in text:
        return "cannot resolve the host name"
    if "timed out" in text.lower():
        return "timed out"
    for marker in ("Failed to establish a new connection: ", "Caused by "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip().rstrip(")").splitlines()[0][:200] if text.strip() else type(e).__name__
