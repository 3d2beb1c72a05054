"""One `buildpy build` from start to end: the context reader (its `.dockerignore`, its stat
cache), the plan, the execution with its progress, the tags, and the `--output`s. The CLI
reads arguments into a `BuildRequest` and `BuildOptions` and calls `build`.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from buildpy.cas.store import Store
from buildpy.executor.options import BuildOptions, BuildResult
from buildpy.planner.request import BuildRequest, identity


class OptionError(Exception):
    """A build flag's value is wrong or names something buildpy does not do."""

    user_facing = True


@dataclass(frozen=True)
class Output:
    type: str  # "oci" | "docker" | "local" | "registry"
    dest: str
    name: str = ""


def parse_output(text: str) -> Output:
    """`--output type=oci,dest=PATH` (and BuildKit's shorthand: a bare PATH is type=local)."""
    if "=" not in text:
        return Output("local", text)
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise OptionError(f"invalid --output {text!r}: {part!r} is not KEY=VALUE")
        fields[key.strip()] = value
    kind = fields.pop("type", "")
    dest = fields.pop("dest", "")
    name = fields.pop("name", "")
    if kind not in ("oci", "docker", "local", "registry", "image"):
        raise OptionError(f"invalid --output {text!r}: type must be oci, docker, local or registry")
    if kind in ("registry", "image") and fields.get("push", "true" if kind == "registry" else "false") == "true":
        raise OptionError("--output type=registry needs the registry client (`buildpy push`), "
                          "which buildpy does not have yet")
    if kind == "image":
        kind = "store"
    elif not dest:
        raise OptionError(f"invalid --output {text!r}: dest= is required for type={kind}")
    if fields:
        raise OptionError(f"invalid --output {text!r}: unknown option {sorted(fields)[0]!r}")
    return Output(kind, dest, name)


def parse_secret(text: str, environ: Mapping[str, str] | None = None) -> tuple[str, bytes]:
    """`--secret id=ID[,src=PATH|,env=VAR][,type=file|env]`, as `docker build` reads it."""
    environ = os.environ if environ is None else environ
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise OptionError(f"invalid --secret {text!r}: {part!r} is not KEY=VALUE")
        key = {"source": "src", "target": "dst"}.get(key.strip(), key.strip())
        fields[key] = value
    sid = fields.get("id", "")
    kind = fields.get("type", "")
    src = fields.get("src", "")
    env = fields.get("env", "")
    if kind == "env" and not env:
        env, src = src, ""
    if not sid:
        sid = env or os.path.basename(src)
    if not sid:
        raise OptionError(f"invalid --secret {text!r}: an id is required")
    if env or (not src and kind != "file" and sid in environ):
        name = env or sid
        if name not in environ:
            raise OptionError(f"--secret {sid}: environment variable {name} is not set")
        return sid, environ[name].encode("utf-8", "surrogateescape")
    path = src or sid
    try:
        with open(path, "rb") as f:
            return sid, f.read()
    except OSError as e:
        raise OptionError(f"--secret {sid}: cannot read {path}: {e.strerror}") from None


def parse_ssh(text: str, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """`--ssh default` (the agent of $SSH_AUTH_SOCK) or `--ssh ID=SOCKET`."""
    environ = os.environ if environ is None else environ
    sid, eq, path = text.partition("=")
    if not eq:
        sock = environ.get("SSH_AUTH_SOCK", "")
        if not sock:
            raise OptionError(f"--ssh {text}: SSH_AUTH_SOCK is not set")
        return sid, sock
    if "," in path:
        raise OptionError(f"--ssh {text}: key files are not supported, give an agent socket")
    return sid, path


def build(
    store: Store,
    request: BuildRequest,
    options: BuildOptions,
    *,
    tags: Sequence[str] = (),
    outputs: Sequence[Output] = (),
    progress: str = "auto",
    stream: TextIO | None = None,
) -> BuildResult:
    from buildpy.planner import fastpath
    from buildpy.planner.dockerignore import read_patterns

    if not request.context.is_dir():
        raise OptionError(f"the build context {request.context} is not a directory")
    stream = stream or sys.stderr
    ident = identity(request)
    patterns = read_patterns(request.context, request.dockerfile)
    fingerprint = ""
    if not options.no_cache and not options.no_cache_filter:
        try:
            dockerfile = request.dockerfile.read_bytes()
        except OSError:
            dockerfile = b""  # the planner says what is wrong with it
        fingerprint = fastpath.fingerprint(request, dockerfile, patterns)
        remembered = fastpath.recall(store, ident, fingerprint)
        if remembered is not None and all(tag in remembered.names for tag in tags):
            result = _remembered(store, remembered, progress, stream)
            return _finish(store, result, [remembered.names[tag] for tag in tags], outputs)
    names = tag_names(tags)
    result = _build(store, request, options, ident, patterns, fingerprint, progress, stream, names)
    return _finish(store, result, list(names.values()), outputs)


def tag_names(tags: Sequence[str]) -> dict[str, str]:
    """Each `-t` as the store names it (docker.io/library/app:1 for app:1)."""
    from buildpy.cas.reference import InvalidReference, parse

    names = {}
    for tag in tags:
        try:
            names[tag] = parse(tag, allow_digest=False).name
        except InvalidReference as e:
            raise OptionError(f"invalid tag {tag!r}: {e}") from None
    return names


def _remembered(store: Store, remembered, progress: str, stream: TextIO) -> BuildResult:  # noqa: ANN001
    from buildpy.cas.image import load_image
    from buildpy.cas.media import Descriptor

    image = load_image(store, Descriptor.from_json(remembered.manifest, "build record"))
    if progress != "quiet":
        lines = []
        for n, label in enumerate(remembered.steps, start=1):
            lines.append(f"#{n} {label}\n#{n} CACHED\n")
        lines.append("nothing changed since the last build: every step reused\n")
        stream.write("".join(lines))
    return BuildResult(image, 0, len(remembered.steps))


def _build(store: Store, request: BuildRequest, options: BuildOptions, ident: str, patterns: list[str],
           fingerprint: str, progress: str, stream: TextIO, names: dict[str, str]) -> BuildResult:
    warm = threading.Thread(target=_warm_up, args=(store,), name="warm-up")
    warm.start()
    try:
        return _plan_and_run(store, request, options, ident, patterns, fingerprint, progress, stream, names)
    finally:
        # never left running into interpreter shutdown: libseccomp's compile crashes there
        warm.join()


def _plan_and_run(store: Store, request: BuildRequest, options: BuildOptions, ident: str, patterns: list[str],
                  fingerprint: str, progress: str, stream: TextIO, names: dict[str, str]) -> BuildResult:
    from buildpy.executor.build import execute
    from buildpy.executor.progress import make_progress
    from buildpy.planner import fastpath
    from buildpy.planner.context import ContextReader
    from buildpy.planner.dockerignore import Matcher
    from buildpy.planner.explain import Previous
    from buildpy.planner.plan import make_plan

    reader = ContextReader(request.context, ignore=Matcher(patterns), stat_cache=store.root / "statcache" / ident)
    plan = make_plan(store, request, reader)
    if plan.unused_args and progress != "quiet":
        stream.write(f"warning: build-args not consumed by any ARG: {', '.join(plan.unused_args)}\n")
    previous = Previous(store, ident)
    steps = [s for s in plan.steps() if s.op != "meta"]
    view = make_progress(progress, len(steps), stream)
    try:
        result = execute(store, plan, options, view, previous)
    finally:
        view.close()
        for path in plan.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
    reader.save()
    previous.save(store, plan)
    if fingerprint and not plan.temp_dirs:
        fastpath.remember(store, ident, fingerprint, result.image.manifest_descriptor.to_json(), dict(plan.bases),
                          [s.label for s in steps], names)
    else:
        fastpath.forget(store, ident)
    return result


def _warm_up(store: Store) -> None:
    """While the plan is made: start the sandbox's fork server, compile its seccomp profile,
    probe overlayfs and import what steps use, so the first RUN of every stage finds them."""
    try:
        import buildpy.executor.ops  # noqa: F401
        from buildpy.sandbox import forkserver, privileges, step

        forkserver.prestart()
        privileges.seccomp_bpf()
        step.overlay_usable(store.tmp_dir)
    except Exception:  # noqa: BLE001 - only a head start: the steps do all this themselves
        pass


def _finish(store: Store, result: BuildResult, names: list[str], outputs: Sequence[Output]) -> BuildResult:
    for name in names:
        current = store.get_ref(name)
        if current is None or current.digest != result.image.digest:
            store.set_ref(name, result.image.manifest_descriptor)
    for out in outputs:
        _export(store, result, out, names)
    return result


def _export(store: Store, result: BuildResult, out: Output, names: list[str]) -> None:
    from buildpy.cas import archive

    if out.type == "store":
        return
    if out.type == "local":
        _unpack_to(store, result, Path(out.dest))
        return
    ref = out.name or (names[0] if names else "")
    if not ref:
        raise OptionError(f"--output type={out.type} needs an image name: give -t NAME or name=NAME")
    from buildpy.cas.reference import parse

    name = parse(ref, allow_digest=False).name
    if store.get_ref(name) is None or store.get_ref(name).digest != result.image.digest:  # type: ignore[union-attr]
        store.set_ref(name, result.image.manifest_descriptor)
    if out.type == "oci":
        archive.export_oci(store, [name], out.dest)
    else:
        archive.export_docker(store, [name], out.dest)


def _unpack_to(store: Store, result: BuildResult, dest: Path) -> None:
    from buildpy.cas.unpack import unpack_blob

    dest.mkdir(parents=True, exist_ok=True)
    for layer in result.image.layers:
        unpack_blob(store, layer, dest, whiteouts="apply")
