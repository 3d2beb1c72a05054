"""The endpoints that move images in and out: pull (POST /images/create), push (POST
/images/{name}/push), login (POST /auth), save (GET /images/{name}/get, /images/get), load (POST
/images/load) and prune (POST /images/prune). Each calls what `buildpy pull/push/login/export
--docker/load/prune` call; this module owns only the Docker wire format: the X-Registry-Auth
header, query parameters, and progress as Docker's JSON lines."""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from buildpy.api import events
from buildpy.api.errors import ApiError, as_api_error
from buildpy.api.routing import Query, dangling, route
from buildpy.cas.store import Store

BODY_JSON_MAX = 64 << 10  # an /auth body is a few hundred bytes
SEND_CHUNK = 1 << 20


class Stream:
    """A JSON-lines answer, begun by the first line; safe for a transfer's threads. A client that
    left stops the sending only: the transfer still finishes (and tags)."""

    def __init__(self, h) -> None:  # noqa: ANN001 - h: the server's exchange
        self._h = h
        self._lock = threading.Lock()
        self.started = False
        self._gone = False

    def send(self, obj: dict[str, Any]) -> None:
        with self._lock:
            if self._gone:
                return
            try:
                if not self.started:
                    self._h.start_stream("application/json")
                    self.started = True
                self._h.chunk((json.dumps(obj, ensure_ascii=False) + "\n").encode())
            except OSError:
                self._gone = True

    def status(self, text: str, ident: str = "", detail: dict[str, int] | None = None) -> None:
        obj: dict[str, Any] = {"status": text}
        if detail is not None:
            obj["progressDetail"] = detail
            if detail.get("total"):
                obj["progress"] = _bar(detail["current"], detail["total"])
        if ident:
            obj["id"] = ident
        self.send(obj)

    def fail(self, e: BaseException) -> None:
        """The error as the stream's last line (its status line has gone out)."""
        message = _message(e)
        self.send({"errorDetail": {"message": message}, "error": message})

    def end(self) -> None:
        if self._gone:
            self._h.close_connection = True
        elif self.started:
            self._h.end_stream()


def _message(e: BaseException) -> str:
    if isinstance(e, ApiError):
        return e.message
    if getattr(e, "user_facing", False):
        return str(e).strip()
    import traceback

    traceback.print_exc()
    return f"internal error: {type(e).__name__}: {e}"


def _bar(current: int, total: int) -> str:
    """Docker's progress text (`[=====>    ]  1.2MB/3.4MB`), shown by a CLI on a terminal."""
    from buildpy.containers.display import human_size

    width = 50
    filled = min(width, current * width // total) if total else 0
    arrow = "=" * max(filled - 1, 0) + (">" if filled else "")
    return f"[{arrow.ljust(width)}] {human_size(current)}/{human_size(total)}"


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


def _familiar(name: str) -> str:
    from buildpy.cas.reference import InvalidReference, parse

    try:
        return parse(name).familiar
    except InvalidReference:
        return name


# credentials


def registry_credentials(header: str):  # noqa: ANN201 - registry.auth.Credentials
    """X-Registry-Auth: base64url JSON {username, password, serveraddress} or {identitytoken}.
    Missing, empty or `{}`: anonymous (then the server's own docker config is used)."""
    from buildpy.registry.auth import ANONYMOUS

    header = header.strip()
    if not header:
        return ANONYMOUS
    try:
        obj = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        raise ApiError(400, "invalid X-Registry-Auth header: not base64url-encoded JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "invalid X-Registry-Auth header: not a JSON object")
    return _credentials_of(obj)


def _credentials_of(obj: dict[str, Any]):  # noqa: ANN202 - registry.auth.Credentials
    from buildpy.registry.auth import Credentials

    user, password = str(obj.get("username") or ""), str(obj.get("password") or "")
    if not user and obj.get("auth"):  # docker's config.json form: base64 user:password
        try:
            user, _, password = base64.b64decode(str(obj["auth"])).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid credentials: auth is not base64 user:password") from None
    return Credentials(user, password, str(obj.get("identitytoken") or ""))


def _clients(h, domain: str):  # noqa: ANN001, ANN202 - registry.clients.Clients
    """The registry clients for a request: its X-Registry-Auth for `domain` when it has some,
    else the credentials the server's docker config keeps."""
    from buildpy.registry.clients import Clients
    from buildpy.registry.settings import Settings

    creds = registry_credentials(h.headers.get("X-Registry-Auth", ""))
    return Clients(Settings.from_env(), None if creds.anonymous else {domain: creds})


def _registry_error(e: BaseException, repository: str, name: str) -> ApiError:
    """A failure before anything was streamed, as docker's daemon answers it."""
    from buildpy.cas.reference import InvalidReference
    from buildpy.registry.settings import AuthError, NotFound

    if isinstance(e, InvalidReference):
        return ApiError(400, str(e))
    if isinstance(e, AuthError):
        # 404, as docker: a 401 would make the CLI ask for a password on its terminal
        return ApiError(404, f"pull access denied for {repository}, repository does not exist or may require "
                             f"'docker login': {e}")
    if isinstance(e, NotFound):
        return ApiError(404, f"manifest for {name} not found: {e}")
    return as_api_error(e)


# pull


def _pull_reference(q: Query) -> str:
    """fromImage with tag (a tag, or a digest) as docker joins them."""
    from buildpy.cas.digest import is_digest
    from buildpy.cas.reference import InvalidReference, parse

    image, tag = q.one("fromImage"), q.one("tag")
    try:
        ref = parse(image)
        if tag and is_digest(tag):
            return parse(f"{ref.repository}@{tag}").name
        if tag:
            return ref.with_tag(tag).name
        return ref.name if (ref.tag or ref.digest) else ref.with_tag("latest").name
    except InvalidReference as e:
        raise ApiError(400, str(e)) from None


def pull(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    """POST /images/create?fromImage=NAME&tag=T: `buildpy pull`, its progress as docker's."""
    from buildpy.cas.reference import parse
    from buildpy.registry.pull import Resolved, pull_image

    text = _pull_reference(q)
    ref = parse(text)
    stream = Stream(h)
    fetched: list[str] = []
    lock = threading.Lock()

    def resolved(r: Resolved) -> None:
        stream.status(f"Pulling from {ref.path}", ref.tag or ref.digest or "latest")
        for layer in dict.fromkeys(r.image.layers):
            if not h.store.has_blob(layer.digest):
                stream.status("Pulling fs layer", _short(layer.digest), {})

    def progress(digest: str, state: str, done: int, total: int) -> None:
        ident = _short(digest)
        if state == "exists":
            stream.status("Already exists", ident, {})
        elif state == "progress":
            stream.status("Downloading", ident, {"current": done, "total": total})
        elif state == "done":
            stream.status("Verifying Checksum", ident, {})
            stream.status("Download complete", ident, {})
            with lock:
                fetched.append(digest)

    try:
        pulled = pull_image(h.store, text, _clients(h, ref.domain), q.one("platform") or None, progress, resolved)
    except Exception as e:  # noqa: BLE001 - before the stream: a status; after: its last line
        if not stream.started:
            raise _registry_error(e, ref.familiar_repository, ref.familiar) from None
        stream.fail(e)
        stream.end()
        return
    for layer in dict.fromkeys(pulled.image.layers):  # in order, as docker reports extraction
        if layer.digest in fetched:
            stream.status("Pull complete", _short(layer.digest), {})
    stream.status(f"Digest: {pulled.digest}")
    name = _familiar(pulled.name)
    events.image("pull", name, name)  # docker names a pull's image by the name pulled
    stream.status(f"Status: Downloaded newer image for {name}" if pulled.updated
                  else f"Status: Image is up to date for {name}")
    stream.end()


@route("POST", r"/images/create")
def _create(h, q: Query) -> None:  # noqa: ANN001
    if not q.one("fromImage"):  # as docker: no fromImage is an import (fromSrc, or the body)
        raise ApiError(501, "buildpy does not implement importing a root filesystem (docker import); "
                            "use docker load")
    pull(h, q)


# push


def _push_sources(store: Store, name: str, tag: str) -> list[str]:
    """The local images a push sends: NAME:TAG, or every tag of NAME (`docker push --all-tags`)."""
    from buildpy.cas.reference import InvalidReference, lookup, parse

    try:
        ref = parse(name, allow_digest=False)
        if tag:
            ref = ref.with_tag(tag)
    except InvalidReference as e:
        raise ApiError(400, str(e)) from None
    if ref.tag is None:
        names = sorted(n for n in store.refs() if _repository(n) == ref.repository and "@" not in n)
    else:
        names = [ref.name]
    for n in names:
        try:
            lookup(store, n)
        except Exception:  # noqa: BLE001 - the image is not there, whatever the reason
            names = []
            break
    if not names:
        raise ApiError(404, f"An image does not exist locally with the tag: {ref.familiar_repository}")
    return names


def _repository(name: str) -> str | None:
    from buildpy.cas.reference import InvalidReference, parse

    try:
        return parse(name).repository
    except InvalidReference:
        return None


def push(h, q: Query, name: str) -> None:  # noqa: ANN001 - h: the server's exchange
    """POST /images/{name}/push?tag=T: `buildpy push`, its progress as docker's."""
    from buildpy.cas.reference import parse, resolve
    from buildpy.registry.push import push as push_image

    store = h.store
    sources = _push_sources(store, name, q.one("tag"))
    repository = parse(sources[0]).repository
    clients = _clients(h, parse(sources[0]).domain)
    stream = Stream(h)
    stream.status(f"The push refers to repository [{repository}]")
    try:
        for source in sources:
            _, image = resolve(store, source)
            layers = {d.digest for d in image.layers}
            for d in dict.fromkeys(image.layers):
                stream.status("Preparing", _short(d.digest), {})

            def progress(digest: str, state: str, done: int, total: int, layers: set[str] = layers) -> None:
                if digest not in layers:
                    return  # the config: docker shows layers only
                ident = _short(digest)
                if state == "exists":
                    stream.status("Layer already exists", ident, {})
                elif state.startswith("mounted from "):
                    stream.status("Mounted from " + state[len("mounted from "):], ident, {})
                elif state == "progress":
                    stream.status("Pushing", ident, {"current": done, "total": total})
                elif state == "done":
                    stream.status("Pushed", ident, {})

            target, digest = push_image(store, source, None, clients, progress)
            events.image("push", _familiar(source), _familiar(source))
            size = store.blob_size(digest) if store.has_blob(digest) else 0
            tag = target.tag or ""
            stream.status(f"{tag}: digest: {digest} size: {size}")
            stream.send({"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": size}})
    except Exception as e:  # noqa: BLE001 - the stream has begun: the error is its last line
        stream.fail(e)
    stream.end()


@route("POST", r"/images/(.+)/push")
def _push(h, q: Query, name: str) -> None:  # noqa: ANN001
    push(h, q, name)


# login


@route("POST", r"/auth")
def _auth(h, q: Query) -> None:  # noqa: ANN001
    """POST /auth (docker login): check the credentials with the registry; the CLI keeps them."""
    from buildpy.registry import auth
    from buildpy.registry.settings import AuthError, RegistryError, Settings

    obj = h.json_body(limit=BODY_JSON_MAX) or {}
    creds = _credentials_of(obj)
    domain = auth.registry_domain(str(obj.get("serveraddress") or ""))
    if creds.anonymous:
        raise ApiError(400, "a login needs a username and a password (or an identity token)")
    try:
        auth.check(domain, creds, Settings.from_env())
    except AuthError as e:
        raise ApiError(401, f"login to {domain} failed: {e}") from None
    except RegistryError as e:
        raise ApiError(500, f"login to {domain} failed: {e}") from None
    h.json(200, {"Status": "Login Succeeded", "IdentityToken": ""})


# save


def save(h, texts: list[str]) -> None:  # noqa: ANN001 - h: the server's exchange
    """A `docker save` tar of the named images: `buildpy export --docker`, then sent."""
    from buildpy.cas import archive

    store = h.store
    if not texts:
        raise ApiError(400, "no images to save: give names=NAME")
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with store.lease():  # prune neither sweeps the blobs nor our temp file while we write it
        names = []
        for text in texts:
            try:
                names += archive.ref_names(store, [text])
            except Exception as e:  # noqa: BLE001
                raise as_api_error(e, text) from None
        directory = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="api-save-"))
        try:
            archive.export_docker(store, list(dict.fromkeys(names)), directory / "save.tar")
            f = open(directory / "save.tar", "rb")  # noqa: SIM115 - read after the file is unlinked
        except Exception as e:  # noqa: BLE001
            raise as_api_error(e) from None
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        events.images_named(store, "save", names)
    with f:
        h.stream("application/x-tar", iter(lambda: f.read(SEND_CHUNK), b""))


@route("GET", r"/images/get")
def _save_many(h, q: Query) -> None:  # noqa: ANN001
    save(h, [n for n in q.all("names") if n])


@route("GET", r"/images/(.+)/get")
def _save_one(h, q: Query, name: str) -> None:  # noqa: ANN001
    save(h, [name])


# load


def load(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    """POST /images/load: the body (a `docker save` tar, maybe compressed) through `buildpy
    load`, which refuses what escapes the archive; refs are set only once all of it is in."""
    from buildpy.cas import archive

    store = h.store
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with store.lease():  # the spooled body in tmp/ is ours until we are done
        fd, spool = tempfile.mkstemp(dir=store.tmp_dir, prefix="api-load-", suffix=".tar")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in h.body():
                    f.write(chunk)
                size = f.tell()
            if size == 0:
                raise ApiError(400, "the request body is empty: send a docker-archive tar (docker save)")
            try:
                loaded = archive.load(store, spool)
            except archive.ArchiveError as e:
                raise ApiError(400, "cannot load the archive: " + str(e).replace(f"{spool}: ", "")
                               .replace(spool, "the archive")) from None
            except Exception as e:  # noqa: BLE001
                raise as_api_error(e) from None
        finally:
            try:
                os.unlink(spool)
            except FileNotFoundError:
                pass
    events.images_loaded("load", loaded)
    stream = Stream(h)
    for name, image in loaded:
        stream.send({"stream": f"Loaded image: {_familiar(name)}\n" if name else f"Loaded image ID: {image.id}\n"})
    if not loaded:
        stream.send({"stream": "Loaded no images\n"})
    stream.end()


@route("POST", r"/images/load")
def _load(h, q: Query) -> None:  # noqa: ANN001
    load(h, q)


# prune


def _dangling_only(q: Query) -> bool:
    """filters={"dangling": {"true": true}} (docker image prune; the default) or {"false": true} (-a)."""
    return bool(dangling(q.filters(("dangling",)), default=True))


def prune(store: Store, dangling_only: bool) -> dict[str, Any]:
    """`buildpy prune`; without `dangling_only` (docker image prune -a) every image no
    container uses is untagged first."""
    from buildpy.containers.prune import prune as prune_store

    pruned = prune_store(store, all_unused=not dangling_only)
    for image_id in pruned.images_removed:
        events.image("delete", image_id, image_id)
    deleted = [{"Untagged": _familiar(n)} for n in pruned.untagged]
    deleted += [{"Deleted": image_id} for image_id in pruned.images_removed]
    return {"ImagesDeleted": deleted or None, "SpaceReclaimed": pruned.bytes_freed}


@route("POST", r"/images/prune")
def _prune(h, q: Query) -> None:  # noqa: ANN001
    dangling_only = _dangling_only(q)
    try:
        answer = prune(h.store, dangling_only)
    except Exception as e:  # noqa: BLE001
        raise as_api_error(e) from None
    h.json(200, answer)
