"""`buildpy run`: an image's ENTRYPOINT/CMD (the CMD replaced by a given command) with its env,
working dir and user, in the sandbox, on an overlay whose upper dir is the container's own
(`ROOT/containers/<id>/upper`, kept for `commit` unless `--rm`). Volumes and host dirs are bind
mounts (the image's VOLUMEs that no -v covers get anonymous volumes, `--rm` removes them; an
empty volume is first filled with what the image has there, as docker's copy-up); limits are a
cgroup the sandbox's first process joins before anything runs; `-t` a pty; the network as
`network.py` says. The exit status is the process's (137 when the memory limit
killed it, as docker).

`plan` (image + options → process, mounts, ports, limits), `record` and `sandbox_for` (overlay,
cgroup, network around one sandbox run) are shared with supervisor.py, which runs the Engine
API's containers in threads of `buildpy serve`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildpy.cas.image import Image
from buildpy.cas.store import Store
from buildpy.containers import network as netlib
from buildpy.containers import state, volumes
from buildpy.containers.state import Container, ContainerError


@dataclass(frozen=True)
class RunOptions:
    image: str
    command: tuple[str, ...] = ()
    name: str = ""
    remove: bool = False
    env: tuple[str, ...] = ()  # -e K=V or -e K (from our environment)
    workdir: str = ""
    user: str | None = None
    volumes: tuple[str, ...] = ()  # -v HOSTDIR:CTRDIR[:ro] | VOLUME:CTRDIR[:ro]
    network: str = "private"
    ports: tuple[str, ...] = ()
    hostname: str = ""
    interactive: bool = False
    tty: bool = False
    memory: str = ""
    cpus: float | None = None
    pids_limit: int | None = None
    entrypoint: str | tuple[str, ...] | None = None  # a tuple: the Engine API's list
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


class NoSuchImage(ContainerError):
    """The image is not in the store (the API answers 404; `run` pulls it)."""


def local_image(store: Store, text: str) -> Image:
    """The image `text` names, from the store only."""
    from buildpy.cas.reference import InvalidReference, resolve
    from buildpy.cas.store import StoreError

    try:
        return resolve(store, text)[1]
    except InvalidReference as e:
        raise ContainerError(f"invalid image name {text!r}: {e}") from None
    except StoreError:
        raise NoSuchImage(f"No such image: {text}") from None


def image_for(store: Store, text: str, clients: object = None) -> Image:
    """The image `text` names: from the store, else pulled (as `docker run` pulls it)."""
    try:
        return local_image(store, text)
    except NoSuchImage:
        from buildpy.registry.clients import Clients
        from buildpy.registry.pull import pull

        return pull(store, text, clients if isinstance(clients, Clients) else Clients())[1]


def image_of(store: Store, container: Container) -> Image:
    """The image a container was created on (its manifest, whatever its name points at now)."""
    from buildpy.cas.image import load_image
    from buildpy.cas.media import Descriptor

    return load_image(store, Descriptor.from_json(_manifest_of(store, container)))


def process_of(image: Image, opts: RunOptions) -> tuple[tuple[str, ...], tuple[str, ...], str, str]:
    """(argv, env, cwd, user) as docker derives them from the config and the flags. An
    `entrypoint` string is the CLI's (`--entrypoint X`: the image's CMD is dropped); a tuple is
    the Engine API's (empty: none, and the image's CMD is used when no command is given)."""
    cfg = image.config.get("config") or {}
    entrypoint = list(cfg.get("Entrypoint") or [])
    if isinstance(opts.entrypoint, tuple):
        entrypoint = list(opts.entrypoint)
        image_cmd = list(cfg.get("Cmd") or []) if not entrypoint else []
    elif opts.entrypoint is not None:
        entrypoint = [opts.entrypoint] if opts.entrypoint else []
        image_cmd = []
    else:
        image_cmd = list(cfg.get("Cmd") or [])
    cmd = list(opts.command) if opts.command else image_cmd
    argv = tuple(entrypoint + cmd)
    if not argv:
        raise ContainerError(f"no command: the image {opts.image} has no ENTRYPOINT or CMD; give one")
    env: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    for item in opts.env:
        k, eq, v = item.partition("=")
        if not k:
            raise ContainerError(f"invalid -e {item!r}")
        if eq:
            env[k] = v
        elif k in opts.environ:
            env[k] = opts.environ[k]
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if opts.tty:
        env.setdefault("TERM", "xterm")
    cwd = opts.workdir or cfg.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise ContainerError(f"the working directory {cwd!r} is not absolute")
    user = opts.user if opts.user is not None else (cfg.get("User") or "")
    return argv, tuple(f"{k}={v}" for k, v in env.items()), cwd, user


def parse_volume(store: Store, text: str) -> tuple[str, Path, bool, str]:
    """(container path, host path, read-only, what) for `-v SRC:DST[:ro|rw]`."""
    parts = text.split(":")
    mode = ""
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("", "ro", "rw"):
        raise ContainerError(f"invalid -v {text!r}: expected HOSTDIR:CTRDIR[:ro] or VOLUME:CTRDIR[:ro]")
    source, target = parts
    if not target.startswith("/") or os.path.normpath(target) == "/":
        raise ContainerError(f"invalid -v {text!r}: the container path must be absolute and not /")
    if source.startswith(("/", ".", "~")):
        host = Path(os.path.expanduser(source)).resolve()
        if not host.exists():
            host.mkdir(parents=True)  # as docker: a missing host dir is made
        return os.path.normpath(target), host, mode == "ro", f"bind:{host}"
    return os.path.normpath(target), volumes.ensure(store, source), mode == "ro", f"volume:{source}"


def with_anonymous_volumes(store: Store, opts: RunOptions, image: Image,
                           wanted: Sequence[str] = ()) -> tuple[RunOptions, tuple[str, ...]]:
    """`opts` with a new anonymous volume at each path that the image declares a VOLUME, or
    `wanted` names (the API's Config.Volumes), and that no -v covers — as docker does when a
    container is created — and the names of the volumes made (for `discard` should the create
    fail). Called once per container, before `plan` (which the API runs again at start)."""
    declared = list((image.config.get("config") or {}).get("Volumes") or {})
    taken = {os.path.normpath(text.split(":")[1]) for text in opts.volumes if text.count(":") >= 1}
    added: list[str] = []
    made: list[str] = []
    try:
        for path in [*declared, *wanted]:
            target = os.path.normpath(str(path))
            if not target.startswith("/") or target == "/" or ":" in target:
                raise ContainerError(f"invalid volume path {path!r}: it must be absolute, not / and without ':'")
            if target in taken:
                continue
            taken.add(target)
            name = volumes.create(store).name
            made.append(name)
            added.append(f"{name}:{target}")
    except BaseException:
        discard(store, made)
        raise
    if not added:
        return opts, ()
    return dataclasses.replace(opts, volumes=(*opts.volumes, *added)), tuple(made)


def discard(store: Store, made: Sequence[str]) -> None:
    """Remove the anonymous volumes `with_anonymous_volumes` made for a container never created."""
    volumes.remove_anonymous(store, [f"volume:{name}" for name in made])


@dataclass(frozen=True)
class Plan:
    """What a container will run, checked before its record exists: the process, the mounts,
    the ports and the limits. `run` and the API's supervisor both start containers from one."""

    image: Image
    argv: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str
    mounts: tuple  # of sandbox.spec.Mount
    mounted: tuple[str, ...]  # "volume:NAME" | "bind:PATH", in the record (volume rm checks it)
    ports: tuple[netlib.Port, ...]
    limits: object = None  # sandbox.cgroups.Limits, or None: no cgroup


def plan(store: Store, opts: RunOptions, image: Image) -> Plan:
    """Everything `opts` asks of `image`, checked; named volumes are made here (as docker), and
    an empty one is given the image's files at its path."""
    from buildpy.sandbox.spec import Mount

    argv, env, cwd, user = process_of(image, opts)
    ports = [netlib.parse_port(p) for p in opts.ports]
    netlib.check(opts.network, ports)
    limits = None
    if opts.memory or opts.cpus is not None or opts.pids_limit is not None:
        from buildpy.sandbox.cgroups import Limits, available, parse_memory

        try:
            memory = parse_memory(opts.memory) if opts.memory else None
        except ContainerError:
            raise
        except Exception as e:
            if not getattr(e, "user_facing", False):
                raise
            raise ContainerError(f"--memory: {e}") from None
        limits = Limits(memory=memory, cpus=opts.cpus,
                        pids=None if opts.pids_limit is not None and opts.pids_limit < 0 else opts.pids_limit)
        if reason := available(limits):
            raise ContainerError(reason)
    mounts, mounted = [], []
    empty: list[tuple[Path, str]] = []
    for text in opts.volumes:
        target, host, readonly, what = parse_volume(store, text)
        mounts.append(Mount(target, "bind", host, readonly))
        mounted.append(what)
        if what.startswith("volume:") and volumes.is_empty(host):
            empty.append((host, target))
    if empty:
        _copy_up(store, image, empty)
    return Plan(image, argv, env, cwd, user, tuple(mounts), tuple(mounted), tuple(ports), limits)


def _copy_up(store: Store, image: Image, empty: Sequence[tuple[Path, str]]) -> None:
    """Fill each empty volume dir with what the image has at its mount path (docker's copy-up:
    a new volume starts with the image's files; one with content is left as it is)."""
    from buildpy.sandbox import snapshots

    with store.lease(), snapshots.use(store, image.layers, image.diff_ids) as lowers:
        for data, target in empty:
            try:
                volumes.fill(data, lowers, target)
            except OSError as e:
                raise ContainerError(f"cannot copy the image's {target} into its volume: {e.strerror or e}") from None


def record(store: Store, opts: RunOptions, p: Plan, extra: Mapping[str, object] | None = None,
           status: str = "created") -> Container:
    """The container's record (its name checked and taken), status `created`."""
    return state.create(
        store, opts.name, image=opts.image, image_digest=p.image.digest, command=p.argv, created=time.time(),
        mounts=tuple(m.target for m in p.mounts), network=opts.network, ports=tuple(str(x) for x in p.ports),
        status=status,
        extra={"volumes": list(p.mounted), "layers": [d.to_json() for d in p.image.layers],
               "diff_ids": p.image.diff_ids, **(extra or {})},
    )


@dataclass
class Box:
    """A container's sandbox, ready to run: `spec` for `sandbox.run`, `on_start` for its hook,
    `limits` what `ps` shows; `oom_killed()` after the run."""

    spec: object  # sandbox.spec.SandboxSpec
    on_start: Callable[[int], None]
    limits: str
    cgroup: object = None

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()


@contextlib.contextmanager
def sandbox_for(store: Store, container: Container, p: Plan, opts: RunOptions) -> Iterator[Box]:
    """The container's root (an overlay on its image's layers, its upper dir kept), its cgroup
    and network for the length of the block; all released after it."""
    from buildpy.sandbox import snapshots
    from buildpy.sandbox.spec import Process, SandboxSpec
    from buildpy.sandbox.step import overlay_on

    cgroup = None
    uplink = None
    try:
        with store.lease(), snapshots.use(store, p.image.layers, p.image.diff_ids) as lowers:
            cdir = state.directory(store, container)
            overlay = dataclasses.replace(overlay_on(tuple(lowers), cdir), volatile=False)
            rootfs = cdir / "rootfs"
            rootfs.mkdir(exist_ok=True)
            spec = SandboxSpec(
                rootfs=rootfs, overlay=overlay, mounts=p.mounts,
                process=Process(args=p.argv, env=p.env, cwd=p.cwd, user=p.user, terminal=opts.tty),
                network="host" if opts.network == "host" else "none",
                hostname=opts.hostname or container.short_id,
            )
            if p.limits is not None:
                from buildpy.sandbox.cgroups import Cgroup

                cgroup = Cgroup.create(container.short_id, p.limits)
            if opts.network == "private" and netlib.uplink_available():
                uplink = netlib.Uplink(list(p.ports))

            def on_start(pid: int) -> None:
                if cgroup is not None:
                    cgroup.add(pid)
                if uplink is not None:
                    uplink.attach(pid)

            yield Box(spec, on_start, cgroup.describe() if cgroup is not None else "", cgroup)
    finally:
        if uplink is not None:
            uplink.close()
        if cgroup is not None:
            cgroup.remove()


def run(store: Store, opts: RunOptions, clients: object = None) -> int:
    from buildpy.sandbox.run import run as sandbox_run

    image = image_for(store, opts.image, clients)
    opts, made = with_anonymous_volumes(store, opts, image)
    try:
        p = plan(store, opts, image)
        container = record(store, opts, p)
    except BaseException:
        discard(store, made)
        raise
    code = 125
    try:
        with _terminable(), sandbox_for(store, container, p, opts) as box:
            container = dataclasses.replace(container, status="running", pid=os.getpid(), limits=box.limits,
                                            started=time.time())
            state.save(store, container)
            code = _attached(sandbox_run, box.spec, opts, box.on_start)
            if box.oom_killed():
                code = 137
    except _Terminated as e:
        code = 128 + e.signum
    finally:
        container = dataclasses.replace(container, status="exited", exit_code=code, finished=time.time())
        if opts.remove:
            state.remove(store, container, force=True)
            volumes.remove_anonymous(store, p.mounted)  # as docker run --rm: named volumes stay
        else:
            state.save(store, container)
    return code


class _Terminated(BaseException):
    """SIGTERM or SIGHUP reached `run`: the container is killed and cleaned up like on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminable() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `_Terminated` from the moment the container exists, so cleanup
    (its record, its cgroup, its network) always runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _frame: object) -> None:
        raise _Terminated(signum)

    saved = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _attached(sandbox_run, spec, opts: RunOptions, on_start) -> int:  # noqa: ANN001
    """The container's stdio: a pty with -t; our stdin with -i (else /dev/null); our stdout and
    stderr as they are."""
    if opts.tty:
        from buildpy.containers.terminal import pty_for_container

        with pty_for_container(opts.interactive) as slave:
            return sandbox_run(spec, stdio=(slave, slave, slave), on_start=on_start)
    stdin = 0 if opts.interactive else None
    return sandbox_run(spec, stdin=stdin, on_start=on_start)


def commit(store: Store, container: Container, name: str, author: str = "", message: str = "", *,
           running_ok: bool = False, config: Mapping[str, object] | None = None) -> Image:
    """The container's change as a new layer on its image: a new image named `name` ("": no
    name, as `docker commit` without a repository). `running_ok`: a running container's upper
    dir is committed as it is (the Engine API's commit; nothing is paused). `config`: the
    image config's `config` to write instead of the base image's."""
    import copy

    from buildpy.cas.image import load_image, now_rfc3339, write_image
    from buildpy.cas.media import Descriptor
    from buildpy.cas.reference import InvalidReference, parse
    from buildpy.sandbox import snapshots
    from buildpy.sandbox.step import upper_layer

    try:
        ref = parse(name, allow_digest=False) if name else None
    except InvalidReference as e:
        raise ContainerError(f"invalid image name {name!r}: {e}") from None
    if container.status == "running" and not running_ok:
        raise ContainerError(f"container {container.name} is running; commit it once it has exited")
    layers = [Descriptor.from_json(d) for d in container.extra.get("layers", [])]
    diff_ids = list(container.extra.get("diff_ids", []))
    container_config = config
    upper = state.directory(store, container) / "upper"
    if not upper.is_dir() and not running_ok:
        raise ContainerError(f"container {container.name} has no change to commit")
    with store.lease():
        base = load_image(store, Descriptor.from_json(_manifest_of(store, container)))
        with snapshots.use(store, layers, diff_ids) as lowers:
            layer = upper_layer(store, upper, lowers, container.mounts) if upper.is_dir() else None
        config = copy.deepcopy(base.config)
        if container_config is not None:
            config["config"] = copy.deepcopy(dict(container_config))
        created = now_rfc3339()
        config["created"] = created
        entry = {"created": created, "created_by": " ".join(container.command)}
        if author:
            entry["author"] = author
            config["author"] = author
        if message:
            entry["comment"] = message
        new_layers = list(base.layers)
        if layer is None:
            entry["empty_layer"] = True
        else:
            new_layers.append(layer.descriptor)
            config["rootfs"]["diff_ids"].append(layer.diff_id)
        config.setdefault("history", []).append(entry)
        image = write_image(store, config, new_layers)
        if ref is not None:
            store.set_ref(ref.with_tag(ref.tag or "latest").name, image.manifest_descriptor)
    return image


def _manifest_of(store: Store, container: Container) -> dict:
    digest = container.image_digest
    media_type = store.read_json(digest).get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
    return {"mediaType": media_type, "digest": digest, "size": store.blob_size(digest)}


def lines_for_ps(containers: Sequence[Container]) -> list[list[str]]:
    rows = []
    for c in containers:
        if c.status == "exited":
            status = f"Exited ({c.exit_code})"
        else:
            status = c.status.capitalize()
        command = " ".join(c.command)
        rows.append([c.short_id, c.image, f'"{command[:30]}"', status, c.limits or "-", ", ".join(c.ports), c.name])
    return rows
