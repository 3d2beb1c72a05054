"""The OCI distribution API of one registry host: manifests (content negotiation, size bound,
digest check), blobs (HEAD, streamed GET into the store verified as it passes and resumed with
a Range request when the connection drops, redirects followed without our credentials to
another host), uploads (monolithic, chunked, cross-repository mount) and the auth a 401 asks
for (basic, or a bearer token per scope, fetched once and reused).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from buildpy.cas.digest import DigestError, is_digest, of_bytes
from buildpy.cas.media import INDEXES, MANIFESTS, Descriptor
from buildpy.cas.store import Store
from buildpy.registry import auth
from buildpy.registry.auth import Challenge, Credentials
from buildpy.registry.blobsource import Progress, _no_progress
from buildpy.registry.settings import AuthError, NotFound, RegistryError, Settings, api_host
from buildpy.registry.transport import Response, Transport

MANIFEST_MAX = 4 << 20  # containerd's bound on a manifest or index
TOKEN_MAX = 1 << 20
ERROR_BODY_MAX = 64 << 10
CHUNK = 1 << 20
CHUNKED_ABOVE = 256 << 20  # larger blobs go up in PATCHed chunks
UPLOAD_CHUNK = 64 << 20
REDIRECTS = 5

ACCEPT_MANIFESTS = ", ".join(sorted(MANIFESTS | INDEXES))


@dataclass
class Client:
    """A session with one registry host; safe to share between threads."""

    domain: str
    settings: Settings = field(default_factory=Settings)
    credentials: Credentials | None = None  # None: look them up as docker does
    transport: Transport = field(init=False)
    _challenge: Challenge | None = None
    _tokens: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _fetching: dict[str, threading.Lock] = field(default_factory=dict)  # one token fetch per scope

    def __post_init__(self) -> None:
        self.transport = Transport(api_host(self.domain), self.settings)

    @property
    def host(self) -> str:
        return self.transport.host

    def _creds(self) -> Credentials:
        if self.credentials is None:
            self.credentials = auth.lookup(self.domain)
        return self.credentials

    # --- requests with auth ----------------------------------------------------------------

    def request(self, method: str, path: str, scope: str, *, headers: Mapping[str, str] | None = None,
                body: object = None, ok: tuple[int, ...] = (200,), retry: bool = True,
                what: str = "", follow: bool = False) -> Response:
        """`method path` with the auth `scope` needs; an answer outside `ok` is an error that says
        what the registry said."""
        what = what or f"{method} {self.host}{path.split('?')[0]}"
        hdrs = dict(headers or {})
        for attempt in range(2):
            auth_header = self._authorization(scope)
            if auth_header:
                hdrs["Authorization"] = auth_header
            r = self.transport.request(method, path, headers=hdrs, body=body, retry=retry, what=what)
            if r.status == 401 and attempt == 0:
                challenge = self._challenge_of(r, what)
                r.release()
                with self._lock:
                    self._challenge = challenge
                    # forget the token we sent, not one another thread has fetched since
                    if auth_header and self._tokens.get(scope) == auth_header.partition(" ")[2]:
                        del self._tokens[scope]
                if body is not None and not isinstance(body, bytes):
                    raise RegistryError(f"{what}: unauthorized")
                continue
            if follow and r.status in (301, 302, 303, 307, 308):
                return self._follow(r, what, ok, scope)
            if r.status not in ok:
                raise _refused(r.status)(f"{what}: {describe(r)}{self._login_hint(r.status)}")
            return r
        raise AuthError(f"{what}: {describe(r)}{self._login_hint(r.status)}")  # 401 again

    def _login_hint(self, status: int) -> str:
        if status in (401, 403) and self._creds().anonymous:
            return f"; run `buildpy login {self.domain}`"
        return ""

    def _follow(self, r: Response, what: str, ok: tuple[int, ...], scope: str) -> Response:
        """Blob GETs are often sent elsewhere (a CDN, object storage): our credentials go only to
        the registry's own origin."""
        origin = urllib.parse.urlsplit(self.transport.base)
        url = r.url
        for _ in range(REDIRECTS):
            location = r.headers.get("location", "")
            r.release()
            if not location:
                raise RegistryError(f"{what}: redirect without a Location")
            url = urllib.parse.urljoin(url, location)
            target = urllib.parse.urlsplit(url)
            if target.scheme not in ("http", "https"):
                raise RegistryError(f"{what}: redirect to a {target.scheme or 'relative'} URL")
            if target.scheme == "http" and not self.settings.http_allowed(target.netloc) and origin.scheme == "https":
                raise RegistryError(f"{what}: redirect from https to plain http ({target.netloc})")
            headers = {}
            if (target.scheme, target.netloc) == (origin.scheme, origin.netloc):
                auth_header = self._authorization(scope)
                if auth_header:
                    headers["Authorization"] = auth_header
            r = self.transport.request("GET", url, headers=headers, what=what)
            if r.status not in (301, 302, 303, 307, 308):
                if r.status not in ok:
                    raise RegistryError(f"{what}: {describe(r)}")
                return r
        raise RegistryError(f"{what}: more than {REDIRECTS} redirects")

    def _challenge_of(self, r: Response, what: str) -> Challenge:
        header = r.headers.get("www-authenticate", "")
        for challenge in auth.parse_challenges(header):
            if challenge.scheme in ("bearer", "basic"):
                return challenge
        raise RegistryError(f"{what}: 401 unauthorized, and the registry offers no way to authenticate"
                            + (f" ({header.split()[0]} is not supported)" if header else ""))

    def _authorization(self, scope: str) -> str:
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return ""
        if challenge.scheme == "basic":
            creds = self._creds()
            if creds.anonymous:
                raise AuthError(f"{self.host}: authentication required; run `buildpy login {self.domain}`")
            return creds.basic()
        token = self._cached_token(scope)
        if token is None:
            with self._lock:
                fetching = self._fetching.setdefault(scope, threading.Lock())
            with fetching:  # the threads of one push wait for one fetch of their scope's token
                token = self._cached_token(scope)
                if token is None:
                    token = self._token(challenge, scope)
                    with self._lock:
                        self._tokens[scope] = token
        return f"Bearer {token}"

    def _cached_token(self, scope: str) -> str | None:
        """The token for `scope`, or one for a scope that grants more (pull,push covers pull)."""
        with self._lock:
            token = self._tokens.get(scope)
            if token is None and scope.endswith(":pull") and " " not in scope:
                token = self._tokens.get(scope + ",push")
            return token

    def _token(self, challenge: Challenge, scope: str) -> str:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"{self.host}: bearer challenge without a usable realm ({realm!r})")
        query = {"service": challenge.params.get("service", "")} if challenge.params.get("service") else {}
        scopes = [s for s in (scope.split(" ") if scope else []) if s]
        creds = self._creds()
        headers = {}
        if creds.identity_token:
            body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                                           "client_id": "buildpy", "scope": " ".join(scopes), **query}).encode()
            r = self.transport.request("POST", realm, body=body,
                                       headers={"Content-Type": "application/x-www-form-urlencoded"},
                                       what=f"token from {_origin(realm)}")
        else:
            params = list(query.items()) + [("scope", s) for s in scopes]
            url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params)
            if not creds.anonymous:
                headers["Authorization"] = creds.basic()
            r = self.transport.request("GET", url, headers=headers, what=f"token from {_origin(realm)}")
        if r.status != 200:
            hint = "; check `buildpy login`" if r.status in (401, 403) else ""
            raise _refused(r.status)(f"token from {_origin(realm)}: {describe(r)}{hint}")
        try:
            obj = json.loads(r.read(TOKEN_MAX))
            token = obj.get("token") or obj.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token from {_origin(realm)}: the answer holds no token")
        return token

    # --- the API ---------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/ with credentials: does this registry accept us?"""
        r = self.request("GET", "/v2/", "", what=f"{self.host}")
        r.release()

    def get_manifest(self, repo: str, reference: str) -> tuple[Descriptor, bytes]:
        """The manifest or index `reference` (a tag or digest) names, checked against its digest."""
        what = f"manifest {self.domain}/{repo}:{reference}" if not is_digest(reference) \
            else f"manifest {self.domain}/{repo}@{reference}"
        r = self.request("GET", f"/v2/{repo}/manifests/{reference}", pull_scope(repo),
                         headers={"Accept": ACCEPT_MANIFESTS}, what=what)
        announced = r.headers.get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > MANIFEST_MAX:
            r.release()
            raise RegistryError(f"{what}: {announced} bytes, more than a manifest may have ({MANIFEST_MAX})")
        try:
            data = r.read(MANIFEST_MAX)
        except RegistryError:
            raise RegistryError(f"{what}: more than a manifest may have ({MANIFEST_MAX} bytes)") from None
        digest = of_bytes(data)
        expected = reference if is_digest(reference) else r.headers.get("docker-content-digest", "")
        if expected.startswith("sha256:") and expected != digest:
            raise RegistryError(f"{what}: content does not match its digest {expected} (got {digest})")
        media_type = r.headers.get("content-type", "").split(";")[0].strip()
        try:
            obj = json.loads(data)
        except ValueError:
            raise RegistryError(f"{what}: not JSON") from None
        if not isinstance(obj, dict):
            raise RegistryError(f"{what}: not a JSON object")
        if media_type not in MANIFESTS | INDEXES:
            media_type = obj.get("mediaType") or ""
            if not media_type and isinstance(obj.get("manifests"), list):
                media_type = "application/vnd.oci.image.index.v1+json"
            elif not media_type and "config" in obj:
                media_type = "application/vnd.oci.image.manifest.v1+json"
        if media_type not in MANIFESTS | INDEXES:
            raise RegistryError(f"{what}: unsupported media type {media_type or '(none)'}"
                                + (" (schema 1 manifests are not supported)" if obj.get("schemaVersion") == 1 else ""))
        return Descriptor(media_type, digest, len(data)), data

    def put_manifest(self, repo: str, reference: str, media_type: str, data: bytes) -> str:
        r = self.request("PUT", f"/v2/{repo}/manifests/{reference}", push_scope(repo),
                         headers={"Content-Type": media_type}, body=data, ok=(201, 200),
                         what=f"push manifest {self.domain}/{repo}:{reference}")
        r.release()
        return r.headers.get("docker-content-digest") or of_bytes(data)

    def has_blob(self, repo: str, digest: str, for_push: bool = False) -> bool:
        """Does `repo` hold the blob? (`for_push`: ask with the push scope, so one token serves
        the HEAD and the upload after it.)"""
        scope = push_scope(repo) if for_push else pull_scope(repo)
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope, ok=(200, 404, 307, 302),
                         what=f"blob {self.domain}/{repo}@{digest}")
        r.release()
        return r.status != 404

    def fetch_blob(self, repo: str, desc: Descriptor, store: Store, progress: Progress = _no_progress) -> None:
        """Stream a blob into the store, verified as it passes; a dropped connection resumes
        where it stopped (Range) or starts over, a few times. Wrong content stores nothing."""
        what = f"blob {self.domain}/{repo}@{desc.digest}"
        if store.has_blob(desc.digest):
            progress(desc.digest, "exists", desc.size, desc.size)
            return
        progress(desc.digest, "start", 0, desc.size)
        restarts = 0
        while True:
            try:
                with store.ingest(desc.digest, desc.size) as writer:
                    self._download(repo, desc, writer, what, progress)
                progress(desc.digest, "done", desc.size, desc.size)
                return
            except _Restart as e:
                restarts += 1
                if restarts > 3:
                    raise RegistryError(f"{what}: {e}") from None
            except DigestError as e:
                raise RegistryError(f"{what}: {e}; nothing was stored") from None

    def _download(self, repo: str, desc: Descriptor, writer, what: str, progress: Progress) -> None:  # noqa: ANN001
        drops = 0
        while True:
            offset = writer.hasher.size
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            r = self.request("GET", f"/v2/{repo}/blobs/{desc.digest}", pull_scope(repo), headers=headers,
                             ok=(200, 206), what=what, follow=True)
            if offset and r.status != 206:
                r.release()
                raise _Restart("the registry cannot resume a download")
            if offset and not r.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                r.release()
                raise _Restart("the registry resumed at another offset")
            announced = r.headers.get("content-length")
            if announced and announced.isdigit() and offset + int(announced) > desc.size:
                r.release()
                raise DigestError(f"the registry announces {offset + int(announced)} bytes, "
                                  f"the manifest {desc.size}")
            try:
                for chunk in r.raw.stream(CHUNK, decode_content=False):
                    writer.write(chunk)
                    progress(desc.digest, "progress", writer.hasher.size, desc.size)
                r.raw.release_conn()
            except DigestError:
                r.raw.close()
                raise
            except Exception as e:  # noqa: BLE001 - a dropped or cut connection: resume
                r.raw.close()
                drops += 1
                if drops > 3:
                    how = "timed out" if "timeout" in type(e).__name__.lower() or "timed out" in str(e) else "cut off"
                    raise RegistryError(f"{what}: {writer.hasher.size} of {desc.size} bytes arrived; "
                                        f"the connection was {how} {drops} times") from None
                continue
            if writer.hasher.size < desc.size:
                drops += 1
                if drops > 3:
                    raise RegistryError(f"{what}: {writer.hasher.size} of {desc.size} bytes arrived")
                continue
            return

    def mount_blob(self, repo: str, digest: str, source_repo: str) -> bool:
        """Ask the registry to link a blob it holds in `source_repo` into `repo` (no upload)."""
        query = urllib.parse.urlencode({"mount": digest, "from": source_repo})
        scope = f"{push_scope(repo)} {pull_scope(source_repo)}"
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/?{query}", scope, ok=(201, 202),
                         what=f"mount {digest} into {self.domain}/{repo}")
        location = r.headers.get("location", "")
        r.release()
        if r.status == 201:
            return True
        if location:  # an upload session we do not need: cancel it so it does not linger
            try:
                self.request("DELETE", location, push_scope(repo), ok=(204, 200, 202, 404, 405), retry=False).release()
            except RegistryError:
                pass
        return False

    def upload_blob(self, repo: str, desc: Descriptor, open_blob: Callable[[], BinaryIO],
                    progress: Progress = _no_progress) -> None:
        """Upload a blob: one PUT, or PATCHed chunks above CHUNKED_ABOVE; retried from the start."""
        what = f"upload {desc.digest} to {self.domain}/{repo}"
        for attempt in range(3):
            try:
                self._upload(repo, desc, open_blob, what, progress)
                progress(desc.digest, "done", desc.size, desc.size)
                return
            except _Restart as e:
                if attempt == 2:
                    raise RegistryError(f"{what}: {e}") from None

    def _upload(self, repo: str, desc: Descriptor, open_blob: Callable[[], BinaryIO], what: str,
                progress: Progress) -> None:
        scope = push_scope(repo)
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope, ok=(202,), what=what,
                         headers={"Content-Length": "0"})
        location = self._location(r, what)
        r.release()
        with open_blob() as f:
            if desc.size > CHUNKED_ABOVE:
                offset = 0
                while offset < desc.size:
                    data = f.read(UPLOAD_CHUNK)
                    end = offset + len(data) - 1
                    try:
                        r = self.request("PATCH", location, scope, body=data, ok=(202,), what=what, retry=False,
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Content-Range": f"{offset}-{end}",
                                                  "Content-Length": str(len(data))})
                    except RegistryError as e:
                        raise _Restart(str(e)) from None
                    location = self._location(r, what)
                    r.release()
                    offset += len(data)
                    progress(desc.digest, "progress", offset, desc.size)
                body: object = b""
                length = 0
            else:
                body = _CountingReader(f, lambda n: progress(desc.digest, "progress", n, desc.size))
                length = desc.size
            sep = "&" if "?" in location else "?"
            try:
                r = self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(desc.digest)}", scope,
                                 body=body, ok=(201, 204), what=what, retry=False,
                                 headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})
            except RegistryError as e:
                raise _Restart(str(e)) from None
            r.release()

    def _location(self, r: Response, what: str) -> str:
        location = r.headers.get("location", "")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        url = urllib.parse.urljoin(self.transport.base + "/", location)
        if urllib.parse.urlsplit(url).netloc != self.host:
            raise RegistryError(f"{what}: upload location on another host ({urllib.parse.urlsplit(url).netloc})")
        return url


class _Restart(Exception):
    pass


class _CountingReader:
    """A file handed to urllib3 as a body, reporting how much went out."""

    def __init__(self, f: BinaryIO, report: Callable[[int], None]) -> None:
        self._f = f
        self._report = report
        self._done = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(max(n, CHUNK) if n != -1 else -1)
        self._done += len(data)
        if data:
            self._report(self._done)
        return data


def _refused(status: int) -> type[RegistryError]:
    """The error for a refusal: AuthError when the registry refused who we are, NotFound for 404."""
    return AuthError if status in (401, 403) else NotFound if status == 404 else RegistryError


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def describe(r: Response) -> str:
    """A registry's answer as one line: its `{"errors":[…]}` when it sent one."""
    try:
        data = r.read(ERROR_BODY_MAX)
    except Exception:  # noqa: BLE001 - the status alone must do
        data = b""
    status = f"{r.status} {_REASONS.get(r.status, '')}".strip()
    try:
        errors = json.loads(data).get("errors")
        parts = []
        for e in errors[:3]:
            text = f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
            parts.append(text)
        if parts:
            return f"{status}: " + "; ".join(parts)
    except (ValueError, AttributeError, TypeError):
        pass
    return status


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 416: "Range Not Satisfiable",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
