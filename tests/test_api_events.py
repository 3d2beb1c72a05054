"""GET /events against a real `buildpy serve`: what the docker CLI, raw HTTP and docker-py see of
containers, execs, images and volumes — replayed with since/until, streamed as it happens,
filtered as docker filters; a client that hangs up leaves nothing behind."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.apiserver import Server, call, docker, needs_docker, raw_request, serving
from tests.imagekit import busybox_or_skip

pytestmark = needs_docker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    busybox_or_skip()
    with serving(tmp_path_factory.mktemp("api-events")) as srv:
        yield srv


def _ok(r) -> str:  # noqa: ANN001 - a CompletedProcess
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def _past(server: Server, since: float, until: float, filters: dict | None = None) -> list[dict]:
    """The events between since and until: the answer ends by itself (until is past)."""
    query = f"since={quote(str(since))}&until={quote(str(until))}" + (f"&filters={quote(json.dumps(filters))}" if filters else "")
    a = call(server.sock, "GET", f"/v1.41/events?{query}")
    assert a.status == 200, a.body
    assert a.headers["Content-Type"] == "application/json"
    return [json.loads(line) for line in a.body.decode().splitlines() if line.strip()]


def _of(events: list[dict], actor: str) -> list[str]:
    return [e["Action"] for e in events if e["Actor"]["ID"] == actor]


class _Stream:
    """A streaming GET /events on a raw socket: its chunks decoded, one event a line."""

    def __init__(self, server: Server, query: str = "") -> None:
        self.sock, head = raw_request(server, f"GET /v1.41/events{query} HTTP/1.1\r\nHost: docker\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        self.sock.settimeout(0.5)
        self.raw = b""
        self.body = b""
        self.ended = False

    def _decode(self) -> None:
        while not self.ended:
            size_end = self.raw.find(b"\r\n")
            if size_end < 0:
                return
            size = int(self.raw[:size_end], 16)
            if len(self.raw) < size_end + 2 + size + 2:
                return
            self.body += self.raw[size_end + 2:size_end + 2 + size]
            self.raw = self.raw[size_end + 2 + size + 2:]
            self.ended = size == 0

    def until(self, found: Callable[[list[dict]], bool], timeout: float = 60) -> list[dict]:
        """Read until `found(events so far)` holds (or the stream ends, or `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            events = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
            if found(events) or self.ended or time.monotonic() > deadline:
                return events
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.ended = True
                continue
            self.raw += data
            self._decode()

    def close(self) -> None:
        self.sock.close()


# replay: since and until


def test_run_rm_replays_create_attach_start_die_destroy(server: Server, tmp_path: Path) -> None:
    t0 = time.time()
    _ok(docker(server, tmp_path, "run", "--rm", "--name", "ev-run", "--label", "team=ev", "busybox", "true"))
    t1 = time.time()
    events = _past(server, t0, t1)
    created = [e for e in events if e["Action"] == "create"]
    assert len(created) == 1, events
    cid = created[0]["Actor"]["ID"]
    assert _of(events, cid) == ["create", "attach", "start", "die", "destroy"]
    for e in events:
        assert e["Type"] == "container" and e["scope"] == "local"
        assert e["status"] == e["Action"] and e["id"] == cid and e["from"] == "busybox"  # as docker 20.10
        assert e["time"] == e["timeNano"] // 1_000_000_000 and t0 <= e["timeNano"] / 1e9 <= t1
        attrs = e["Actor"]["Attributes"]
        assert attrs["image"] == "busybox" and attrs["name"] == "ev-run" and attrs["team"] == "ev"
    die = events[3]["Actor"]["Attributes"]
    assert die["exitCode"] == "0"
    assert [e["timeNano"] for e in events] == sorted(e["timeNano"] for e in events)
    # a window that ends before the run holds none of it
    assert _past(server, t0 - 10, t0 - 5) == []


def test_docker_events_cli_prints_the_die_line(server: Server, tmp_path: Path) -> None:
    t0 = time.time()
    cid = _ok(docker(server, tmp_path, "run", "-d", "--name", "ev-cli", "busybox", "sh", "-c", "exit 5"))
    assert _ok(docker(server, tmp_path, "wait", cid)) == "5"
    t1 = time.time()
    r = docker(server, tmp_path, "events", "--since", f"{t0:.9f}", "--until", f"{t1:.9f}", "--filter", "event=die")
    lines = _ok(r).splitlines()
    assert len(lines) == 1, r.stdout
    assert f" container die {cid} (" in lines[0] and "exitCode=5" in lines[0] and "name=ev-cli" in lines[0]
    r = docker(server, tmp_path, "events", "--since", f"{t0:.9f}", "--until", f"{t1:.9f}",
               "--filter", "container=ev-cli", "--format", "{{.Action}} {{.Actor.ID}}")
    assert _ok(r).splitlines() == [f"create {cid}", f"start {cid}", f"die {cid}"]
    _ok(docker(server, tmp_path, "rm", "ev-cli"))


def test_label_filters_key_and_key_value(server: Server, tmp_path: Path) -> None:
    t0 = time.time()
    one = _ok(docker(server, tmp_path, "create", "--label", "proj=p1", "--label", "oneoff=False", "busybox", "true"))
    two = _ok(docker(server, tmp_path, "create", "--label", "proj=p2", "busybox", "true"))
    _ok(docker(server, tmp_path, "rm", one, two))
    t1 = time.time()
    # as docker-compose asks: every label of the list must hold
    got = _past(server, t0, t1, {"label": ["proj=p1", "oneoff=False"]})
    assert {e["Actor"]["ID"] for e in got} == {one} and _of(got, one) == ["create", "destroy"]
    got = _past(server, t0, t1, {"label": {"proj": True}})  # the map form; a key alone: any value
    assert {e["Actor"]["ID"] for e in got} == {one, two}
    assert _past(server, t0, t1, {"label": ["proj=p3"]}) == []
    got = _past(server, t0, t1, {"type": ["container"], "event": ["destroy"], "container": [two[:12]]})
    assert [(e["Actor"]["ID"], e["Action"]) for e in got] == [(two, "destroy")]


def test_lifecycle_kill_rename_exec_commit(server: Server, tmp_path: Path) -> None:
    t0 = time.time()
    cid = _ok(docker(server, tmp_path, "run", "-d", "--name", "ev-life", "busybox", "sleep", "100"))
    _ok(docker(server, tmp_path, "rename", "ev-life", "ev-life2"))
    r = docker(server, tmp_path, "exec", "ev-life2", "sh", "-c", "exit 4")
    assert r.returncode == 4, r.stderr
    _ok(docker(server, tmp_path, "commit", "ev-life2", "ev-commit:1"))
    _ok(docker(server, tmp_path, "kill", "ev-life2"))
    _ok(docker(server, tmp_path, "rm", "ev-life2"))
    t1 = time.time()
    events = _past(server, t0, t1)
    assert _of(events, cid) == ["create", "start", "rename", "exec_create: sh -c exit 4", "exec_start: sh -c exit 4",
                                "exec_die", "commit", "kill", "die", "destroy"]
    by = {e["Action"]: e["Actor"]["Attributes"] for e in events if e["Actor"]["ID"] == cid}
    assert by["rename"]["oldName"] == "/ev-life" and by["rename"]["name"] == "ev-life2"
    assert by["exec_die"]["exitCode"] == "4" and by["exec_die"]["execID"] == by["exec_start: sh -c exit 4"]["execID"]
    assert by["kill"]["signal"] == "9" and by["die"]["exitCode"] == "137"
    assert by["commit"]["imageRef"] == "ev-commit:1"
    tag = [e for e in events if e["Type"] == "image"]
    assert [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]["name"]) for e in tag] == [
        ("tag", by["commit"]["imageID"], "ev-commit:1")]
    # event=exec_start matches `exec_start: COMMAND`, as docker's
    got = _past(server, t0, t1, {"event": ["exec_start"]})
    assert [e["Action"] for e in got] == ["exec_start: sh -c exit 4"]


# streaming


def test_stream_receives_later_events_filtered_by_type(server: Server, tmp_path: Path) -> None:
    stream = _Stream(server, "?filters=" + quote(json.dumps({"type": ["container"]})))
    try:
        _ok(docker(server, tmp_path, "volume", "create", "ev-not-seen"))  # a volume event: filtered out
        cid = _ok(docker(server, tmp_path, "run", "-d", "busybox", "sh", "-c", "exit 3"))
        events = stream.until(lambda evs: any(e["Action"] == "die" and e["Actor"]["ID"] == cid for e in evs))
        assert not stream.ended
        assert _of(events, cid) == ["create", "start", "die"], events
        assert events[-1]["Actor"]["Attributes"]["exitCode"] == "3"
        assert {e["Type"] for e in events} == {"container"}
    finally:
        stream.close()
    _ok(docker(server, tmp_path, "rm", cid))
    _ok(docker(server, tmp_path, "volume", "rm", "ev-not-seen"))


def test_stream_with_since_replays_then_goes_on(server: Server, tmp_path: Path) -> None:
    t0 = time.time()
    first = _ok(docker(server, tmp_path, "create", "--name", "ev-replay1", "busybox", "true"))
    stream = _Stream(server, f"?since={t0}&filters=" + quote(json.dumps({"event": ["create"]})))
    try:
        second = _ok(docker(server, tmp_path, "create", "--name", "ev-replay2", "busybox", "true"))
        events = stream.until(lambda evs: len(evs) >= 2)
        assert [e["Actor"]["ID"] for e in events] == [first, second]
    finally:
        stream.close()
    _ok(docker(server, tmp_path, "rm", first, second))


def test_stream_ends_at_a_future_until(server: Server, tmp_path: Path) -> None:
    stream = _Stream(server, f"?until={time.time() + 2}")
    try:
        stream.until(lambda evs: False, timeout=30)
        assert stream.ended  # the terminating chunk came, the connection stays usable
    finally:
        stream.close()


def test_bad_parameters_are_400(server: Server) -> None:
    a = call(server.sock, "GET", "/v1.41/events?since=yesterday")
    assert a.status == 400 and "since" in a.json()["message"]
    a = call(server.sock, "GET", "/v1.41/events?filters=" + quote(json.dumps({"colour": ["red"]})))
    assert a.status == 400 and "colour" in a.json()["message"]
    a = call(server.sock, "GET", "/v1.41/events?since=20&until=10")
    assert a.status == 400
    # RFC 3339 is read too: the window of the epoch's first minute holds nothing
    assert _past(server, "1970-01-01T00:00:00Z", "1970-01-01T00:01:00.5+00:00") == []  # type: ignore[arg-type]


# images and volumes


def test_image_tag_untag_and_build_tag(server: Server, tmp_path: Path) -> None:
    busybox_id = _ok(docker(server, tmp_path, "image", "inspect", "--format", "{{.Id}}", "busybox"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nLABEL stage=events\n")
    t0 = time.time()
    _ok(docker(server, tmp_path, "tag", "busybox", "ev-tag:1"))
    _ok(docker(server, tmp_path, "rmi", "ev-tag:1"))
    _ok(docker(server, tmp_path, "build", "-q", "-t", "ev-built:1", "-t", "ev-built:2", str(ctx)))
    built_id = _ok(docker(server, tmp_path, "image", "inspect", "--format", "{{.Id}}", "ev-built:1"))
    t1 = time.time()
    images = _past(server, t0, t1, {"type": ["image"]})
    assert [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]["name"]) for e in images] == [
        ("tag", busybox_id, "ev-tag:1"), ("untag", busybox_id, busybox_id),
        ("tag", built_id, "ev-built:1"), ("tag", built_id, "ev-built:2")]
    assert images[2]["Actor"]["Attributes"]["stage"] == "events"  # the image's labels, as docker's
    assert all(e["status"] == e["Action"] and e["id"] == e["Actor"]["ID"] and "from" not in e for e in images)
    # docker's image filter: the name with or without its tag
    r = docker(server, tmp_path, "events", "--since", f"{t0:.9f}", "--until", f"{t1:.9f}", "--filter", "image=ev-built",
               "--format", "{{.Action}} {{.Actor.Attributes.name}}")
    assert _ok(r).splitlines() == ["tag ev-built:1", "tag ev-built:2"]
    _ok(docker(server, tmp_path, "rmi", "ev-built:1", "ev-built:2"))


def test_volume_create_mount_unmount_destroy(server: Server, tmp_path: Path) -> None:
    t0 = time.time()
    _ok(docker(server, tmp_path, "volume", "create", "ev-vol"))
    _ok(docker(server, tmp_path, "run", "--rm", "-v", "ev-vol:/data", "busybox", "true"))
    _ok(docker(server, tmp_path, "volume", "rm", "ev-vol"))
    t1 = time.time()
    got = _past(server, t0, t1, {"volume": ["ev-vol"]})
    assert [e["Action"] for e in got] == ["create", "mount", "unmount", "destroy"]
    assert all(e["Type"] == "volume" and e["Actor"]["ID"] == "ev-vol" and "status" not in e for e in got)
    assert got[1]["Actor"]["Attributes"]["destination"] == "/data"
    assert got[1]["Actor"]["Attributes"]["read/write"] == "true" and got[0]["Actor"]["Attributes"]["driver"] == "local"
    # mounted before the container starts, unmounted after it dies, as docker tells it
    everything = _past(server, t0, t1)
    order = [(e["Type"], e["Action"]) for e in everything if e["Action"] in ("mount", "start", "die", "unmount")]
    assert order == [("volume", "mount"), ("container", "start"), ("container", "die"), ("volume", "unmount")]


# docker-py


def test_docker_py_events(server: Server) -> None:
    docker_py = pytest.importorskip("docker")
    client = docker_py.DockerClient(base_url=f"unix://{server.sock}", version="1.41", timeout=120)
    try:
        t0 = time.time()
        c = client.containers.create("busybox", ["true"], name="ev-py", labels={"from": "docker-py"})
        c.remove()
        t1 = time.time()
        got = list(client.api.events(since=t0, until=t1, decode=True))
        assert [(e["Action"], e["id"]) for e in got] == [("create", c.id), ("destroy", c.id)]
        got = list(client.events(since=t0, until=t1, decode=True, filters={"label": "from=docker-py", "event": "destroy"}))
        assert [e["Actor"]["Attributes"]["name"] for e in got] == ["ev-py"]
        # a stream docker-py closes: the server goes on answering
        stream = client.events(decode=True, filters={"container": "ev-py-later"})
        later = client.containers.create("busybox", ["true"], name="ev-py-later")
        got = []
        reader = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
        reader.start()
        reader.join(60)  # no timing asserted: a bound, so a missing event fails instead of hanging
        assert [(e["Action"], e["id"]) for e in got] == [("create", later.id)]
        stream.close()
        later.remove()
    finally:
        client.close()


# a client that leaves


def _threads(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/task"))


def test_hung_up_streams_end_and_an_open_one_does_not_stop_sigterm(tmp_path: Path) -> None:
    with serving(tmp_path, busybox=False) as srv:
        assert call(srv.sock, "GET", "/_ping").status == 200
        time.sleep(0.5)  # the ping's thread ends
        before = _threads(srv)
        streams = [_Stream(srv, "?filters=" + quote(json.dumps({"type": ["network"]}))) for _ in range(5)]
        assert _threads(srv) >= before + 5  # one thread a stream, each waiting for events
        for s in streams:
            s.close()
        deadline = time.monotonic() + 15
        while _threads(srv) > before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _threads(srv) <= before, "a stream whose client left is still being served"
        assert call(srv.sock, "GET", "/_ping").status == 200
        open_stream = _Stream(srv)
        try:
            assert srv.stop() == 0  # SIGTERM: served streams do not hold the server
            open_stream.until(lambda evs: False, timeout=10)
            assert open_stream.ended
        finally:
            open_stream.close()
