"""GET /events (`docker events`, docker-py's `client.events`, docker-compose's watch): the
server's event bus. It owns the ring of past events (the last RING_SIZE, in memory only: a
restarted server remembers none), the streams subscribed to it, `publish` and the helpers the
endpoints call once an action succeeded (`container`, `image`, `image_named`, `volume`,
`exec_event`), the supervisor's listener (what happens to a container on its own: it starts,
is signalled, dies, is auto-removed, an exec ends), and the endpoint: Docker's filters, `since`
(a replay from the ring), `until` (past events only, or a stream that ends then).

Events are Docker's JSON, one object a line, with the old `status`/`id`/`from` fields docker
20.10 still sends for containers and images (docker-compose 1.29 reads them)."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import select
import socket
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, labels_match, route
from buildpy.cas.store import Store
from buildpy.containers import supervisor as sup
from buildpy.containers.state import Container

RING_SIZE = 1000  # past events a `since` can replay
QUEUE_SIZE = 1024  # events a stream may lag behind; past that a slow client misses some, as docker's
_POLL = 1.0  # how often a stream checks that its client is still there

Message = dict[str, Any]

_lock = threading.Lock()
_ring: deque[Message] = deque(maxlen=RING_SIZE)
_subscribers: set[queue.Queue[Message]] = set()
_last_nano = 0


def publish(kind: str, action: str, actor_id: str, attributes: dict[str, str] | None = None) -> None:
    """Record an event and hand it to every stream. Never blocks: a stream too far behind
    misses it."""
    global _last_nano
    with _lock:
        # strictly increasing times: a replay's `since`/`until` cut between two events, never through one
        nano = _last_nano = max(time.time_ns(), _last_nano + 1)
        msg: Message = {}
        if kind in ("container", "image"):  # the fields docker keeps for old clients
            msg["status"] = action
            msg["id"] = actor_id
            if kind == "container":
                msg["from"] = (attributes or {}).get("image", "")
        msg.update({"Type": kind, "Action": action, "Actor": {"ID": actor_id, "Attributes": dict(attributes or {})},
                    "scope": "local", "time": nano // 1_000_000_000, "timeNano": nano})
        _ring.append(msg)
        for q in _subscribers:
            with contextlib.suppress(queue.Full):
                q.put_nowait(msg)


# what the endpoints publish


def _labels(c: Container) -> dict[str, str]:
    """The container's labels as inspect shows them: the image's, then the container's own."""
    labels = dict((c.extra.get("resolved", {}).get("image_config") or {}).get("Labels") or {})
    labels.update((c.extra.get("docker", {}).get("Config") or {}).get("Labels") or {})
    return {str(k): str(v) for k, v in labels.items()}


def container(action: str, c: Container, attributes: dict[str, str] | None = None) -> None:
    """A container event; its attributes are `attributes`, its labels, `image` and `name`, as
    docker's (compose's label filters match on them)."""
    attrs = dict(attributes or {})
    attrs.update(_labels(c))
    attrs["image"] = c.image
    attrs["name"] = c.name
    publish("container", action, c.id, attrs)


def image(action: str, image_id: str, name: str, labels: dict[str, str] | None = None) -> None:
    attrs = {str(k): str(v) for k, v in (labels or {}).items()}
    attrs["name"] = name
    publish("image", action, image_id, attrs)


def resolved(store: Store, ref: str) -> tuple[str, dict[str, str]] | None:
    """(ID, labels) of the image `ref` names now; None if it names none."""
    from buildpy.cas.reference import resolve

    try:
        _, img = resolve(store, ref)
    except Exception:  # noqa: BLE001 - the action succeeded; its event is not worth an error
        return None
    labels = (img.config.get("config") or {}).get("Labels") or {}
    return img.id, {str(k): str(v) for k, v in labels.items()}


def image_named(store: Store, action: str, ref: str) -> None:
    """An image event for the image `ref` names now: named `ref` for a tag, by its ID otherwise
    (save, load), as docker's."""
    found = resolved(store, ref)
    if found is not None:
        image(action, found[0], familiar(ref) if action == "tag" else found[0], found[1])


def images_named(store: Store, action: str, refs: list[str]) -> None:
    """One event per image the refs name (save): docker's are per image, by ID."""
    seen = set()
    for ref in refs:
        found = resolved(store, ref)
        if found is not None and found[0] not in seen:
            seen.add(found[0])
            image(action, found[0], found[0], found[1])


def images_loaded(action: str, loaded: list[tuple[str | None, Any]]) -> None:
    """One event per image (cas.image.Image) of `loaded` (load's (name, image) pairs), by ID."""
    for img in {img.id: img for _, img in loaded}.values():
        image(action, img.id, img.id, (img.config.get("config") or {}).get("Labels") or {})


def familiar(name: str) -> str:
    from buildpy.cas.reference import InvalidReference, parse

    try:
        return parse(name).familiar
    except InvalidReference:
        return name


def volume(action: str, name: str, attributes: dict[str, str] | None = None) -> None:
    publish("volume", action, name, {"driver": "local", **(attributes or {})})


def exec_event(store: Store, action: str, e: sup.Exec) -> None:
    """exec_create / exec_start: the action names the command, as docker's (`exec_start: sh -c …`)."""
    try:
        c = sup.for_store(store).find(e.container_id)
    except Exception:  # noqa: BLE001 - the container went meanwhile
        return
    container(f"{action}: {' '.join(e.config.args)}", c, {"execID": e.id})


# what the supervisor tells


def _volume_mounts(c: Container) -> list[tuple[str, str, bool]]:
    """(volume, destination, read-write) of the container's named volumes."""
    targets = list(c.mounts)
    binds = c.extra.get("options", {}).get("volumes") or []
    out = []
    for i, what in enumerate(c.extra.get("volumes", [])):
        kind, _, source = str(what).partition(":")
        if kind == "volume":
            out.append((source, targets[i] if i < len(targets) else "",
                        not (i < len(binds) and str(binds[i]).endswith(":ro"))))
    return out


def _on_supervisor(action: str, c: Container, attributes: dict[str, str]) -> None:
    """The supervisor's listener; its volumes are mounted just before a start and unmounted
    after a death, as docker tells it."""
    if action == "start":
        for name, destination, rw in _volume_mounts(c):
            volume("mount", name, {"container": c.id, "destination": destination, "propagation": "",
                                   "read/write": "true" if rw else "false"})
    container(action, c, attributes)
    if action == "die":
        for name, _, _ in _volume_mounts(c):
            volume("unmount", name, {"container": c.id})


sup.Supervisor.on_event.append(_on_supervisor)


# the endpoint

_FILTERS = ("config", "container", "daemon", "event", "image", "label", "network", "node", "plugin", "scope",
            "secret", "service", "type", "volume")
_FUZZY_EVENTS = ("exec_create", "exec_start", "health_status")  # their actions go on with ": COMMAND"


def _fuzzy(values: list[str] | None, source: str) -> bool:
    """docker's FuzzyMatch: no filter, or a value equal to or a prefix of `source`."""
    return values is None or any(source.startswith(v) for v in values)


def _exact(values: list[str] | None, source: str) -> bool:
    return values is None or source in values


def _strip_tag(name: str) -> str:
    """docker's stripTag: the repository of a NAME:TAG or NAME@DIGEST; an image ID as it is."""
    if name.startswith("sha256:"):
        return name
    if "@" in name:
        return name.partition("@")[0]
    last = name.rpartition("/")[2]
    return name[:len(name) - len(last)] + last.partition(":")[0] if ":" in last else name


def matches(msg: Message, f: dict[str, list[str]]) -> bool:
    """Docker's events filter: every key given holds (its values are alternatives)."""
    kind, action = msg["Type"], msg["Action"]
    actor = msg["Actor"]["ID"]
    attrs: dict[str, str] = msg["Actor"]["Attributes"]
    if "event" in f:
        fuzzy = any(v in _FUZZY_EVENTS for v in f["event"])
        if not (_fuzzy(f["event"], action) if fuzzy else _exact(f["event"], action)):
            return False
    if not _exact(f.get("type"), kind) or not _exact(f.get("scope"), msg["scope"]):
        return False
    for key in ("container", "volume", "network", "plugin", "daemon", "node", "service", "secret", "config"):
        if key in f and not (_fuzzy(f[key], actor) or _fuzzy(f[key], attrs.get("name", ""))):
            return False  # each names actors of its own type: a container=X filter keeps X's events only
    if "image" in f:
        name = attrs.get("name" if kind == "image" else "image", "")
        if not any(s in f["image"] for s in (actor, name, _strip_tag(actor), _strip_tag(name))):
            return False
    return "label" not in f or labels_match(attrs, f["label"])


_UNIX_RE = re.compile(r"(-?\d+)(?:\.(\d+))?")
_RFC3339_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)")


def parse_time(name: str, text: str) -> int | None:
    """`since`/`until` in nanoseconds: unix seconds (`1700000000.5`, as the CLI and docker-py send
    them) or RFC 3339; None when absent."""
    text = text.strip()
    if not text:
        return None
    m = _UNIX_RE.fullmatch(text)
    if m:
        return int(m.group(1)) * 1_000_000_000 + int((m.group(2) or "0")[:9].ljust(9, "0"))
    m = _RFC3339_RE.fullmatch(text)
    if m:
        zone = m.group(8)
        offset = timedelta(0) if zone in ("Z", "z") else (1 if zone[0] == "+" else -1) * timedelta(
            hours=int(zone[1:3]), minutes=int(zone[4:6]))
        try:
            t = datetime(*(int(m.group(i)) for i in range(1, 7)), tzinfo=timezone(offset))  # type: ignore[misc]
        except ValueError:
            pass
        else:
            return int(t.timestamp()) * 1_000_000_000 + int((m.group(7) or "0")[:9].ljust(9, "0"))
    raise ApiError(400, f"invalid {name} {text[:100]!r}: expected unix seconds or an RFC 3339 time")


def _subscribe(since: int | None, until: int | None, stream: bool) -> tuple[list[Message], queue.Queue[Message] | None]:
    """The past events `since`..`until` asks for (none without either, as docker) and, when
    `stream`, a queue of what comes next: both at once, so no event is missed or sent twice."""
    with _lock:
        past = [] if since is None and until is None else [
            m for m in _ring if (since is None or m["timeNano"] >= since) and (until is None or m["timeNano"] <= until)]
        q: queue.Queue[Message] | None = None
        if stream:
            q = queue.Queue(QUEUE_SIZE)
            _subscribers.add(q)
        return past, q


def _unsubscribe(q: queue.Queue[Message] | None) -> None:
    with _lock:
        _subscribers.discard(q)  # type: ignore[arg-type]


def hung_up(conn: socket.socket) -> bool:
    """The client closed the connection (it sends nothing more on it while it reads events):
    POLLHUP, as build's watcher reads it; a client that shut down only its writing side still reads."""
    poller = select.poll()
    poller.register(conn.fileno(), 0)  # no events asked: POLLHUP and POLLERR are always reported
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))


def _line(msg: Message) -> bytes:
    return (json.dumps(msg, ensure_ascii=False) + "\n").encode()


@route("GET", r"/events")
def _events(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    filters = q.filters(_FILTERS)
    since, until = parse_time("since", q.one("since")), parse_time("until", q.one("until"))
    if since is not None and until is not None and since > until:
        raise ApiError(400, f"since ({q.one('since')}) cannot be after until ({q.one('until')})")
    past_only = until is not None and until <= time.time_ns()
    past, listener = _subscribe(since, until, stream=not past_only)
    try:
        h.start_stream("application/json")  # the headers go at once: the client knows it is subscribed
        for msg in past:
            if matches(msg, filters):
                h.chunk(_line(msg))
        while listener is not None:
            wait = _POLL if until is None else min(_POLL, (until - time.time_ns()) / 1e9)
            if wait <= 0:
                break  # `until` has come
            try:
                msg = listener.get(timeout=wait)
            except queue.Empty:
                if hung_up(h.connection):
                    h.close_connection = True
                    return
                continue
            if until is not None and msg["timeNano"] > until:
                break
            if matches(msg, filters):
                h.chunk(_line(msg))  # a failed write: the client left
            elif hung_up(h.connection):  # events it does not want: still notice it leaving
                h.close_connection = True
                return
        h.end_stream()
    except OSError:
        h.close_connection = True
    finally:
        _unsubscribe(listener)
