"""One `buildpy build` from start to end: the context reader (its `.dockerignore`, its stat
cache), the plan, the execution with its progress, the tags, and the `--output`s. The CLI
reads arguments into a `BuildRequest` and `BuildOptions` and calls `build`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from buildpy.cas.image import Image
from buildpy.cas.store import Store
from buildpy.executor.options import BuildOptions, BuildResult
from buildpy.planner.request import BuildRequest, identity

if TYPE_CHECKING:
    from buildpy.registry.cache import CacheSpec
    from buildpy.registry.clients import Clients


class OptionError(Exception):
    """A build flag's value is wrong or names something buildpy does not do."""

    user_facing = True


@dataclass(frozen=True)
class Remote:
    """What a build reaches outside the store: registries (for FROM images the store lacks,
    `--output type=registry`) and the `--cache-from`/`--cache-to` caches."""

    clients: Clients | None = None
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()


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
    push = fields.pop("push", "true" if kind == "registry" else "false")
    if push not in ("true", "false"):
        raise OptionError(f"invalid --output {text!r}: push must be true or false")
    if kind in ("registry", "image"):
        kind = "registry" if push == "true" else "store"
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
    remote: Remote | None = None,
) -> BuildResult:
    from buildpy.planner import fastpath
    from buildpy.planner.dockerignore import read_patterns

    if not request.context.is_dir():
        raise OptionError(f"the build context {request.context} is not a directory")
    stream = stream or sys.stderr
    remote = remote or Remote()
    ident = identity(request)
    patterns = read_patterns(request.context, request.dockerfile)
    fingerprint = ""
    if (not options.no_cache and not options.no_cache_filter and not remote.cache_to and not request.pull
            and not request.named_contexts):  # the fingerprint does not cover named contexts
        try:
            dockerfile = request.dockerfile.read_bytes()
        except OSError:
            dockerfile = b""  # the planner says what is wrong with it
        fingerprint = fastpath.fingerprint(request, dockerfile, patterns)
        remembered = fastpath.recall(store, ident, fingerprint)
        if remembered is not None and all(tag in remembered.names for tag in tags):
            result = _remembered(store, remembered, progress, stream)
            return _finish(store, result, [remembered.names[tag] for tag in tags], outputs, remote, stream)
    names = tag_names(tags)
    result = _build(store, request, options, ident, patterns, fingerprint, progress, stream, names, remote)
    return _finish(store, result, list(names.values()), outputs, remote, stream)


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
           fingerprint: str, progress: str, stream: TextIO, names: dict[str, str], remote: Remote) -> BuildResult:
    warm = threading.Thread(target=_warm_up, args=(store,), name="warm-up")
    warm.start()
    try:
        # leased from the plan on: what planning fetches (a base image's manifest and config, an
        # imported cache's) has no ref until the build ends, and prune must not take it
        with store.lease():
            return _plan_and_run(store, request, options, ident, patterns, fingerprint, progress, stream, names,
                                 remote)
    finally:
        # never left running into interpreter shutdown: libseccomp's compile crashes there
        warm.join()


def _plan_and_run(store: Store, request: BuildRequest, options: BuildOptions, ident: str, patterns: list[str],
                  fingerprint: str, progress: str, stream: TextIO, names: dict[str, str],
                  remote: Remote) -> BuildResult:
    from buildpy.executor.build import execute
    from buildpy.executor.progress import make_progress
    from buildpy.planner import fastpath
    from buildpy.planner.context import ContextReader
    from buildpy.planner.dockerignore import Matcher
    from buildpy.planner.explain import Previous
    from buildpy.planner.plan import make_plan

    from buildpy.registry.blobsource import BlobSource

    reader = ContextReader(request.context, ignore=Matcher(patterns), stat_cache=store.root / "statcache" / ident)
    blobs = BlobSource(store)
    imported = _import_caches(store, remote, blobs, progress, stream)
    fetched: dict[str, Image] = {}
    plan = make_plan(store, request, reader, _image_fetcher(store, remote, blobs, fetched))
    if imported.mounts:
        _restore_cache_mounts(store, plan, imported, blobs, progress, stream)
    if plan.unused_args and progress != "quiet":
        stream.write(f"warning: build-args not consumed by any ARG: {', '.join(plan.unused_args)}\n")
    previous = Previous(store, ident)
    steps = [s for s in plan.steps() if s.op != "meta"]
    view = make_progress(progress, len(steps), stream)
    try:
        result = execute(store, plan, options, view, previous, imported=imported.records, blobs=blobs)
    finally:
        view.close()
        for path in plan.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
    reader.save()
    previous.save(store, plan)
    for name, image in fetched.items():  # a base image fetched whole is kept, as `pull` keeps it
        current = store.get_ref(name)
        if (current is None or current.digest != image.digest) and all(store.has_blob(d.digest) for d in image.layers):
            store.set_ref(name, image.manifest_descriptor)
    for spec in remote.cache_to:
        _export_cache(store, plan, result, spec, remote, blobs, progress, stream)
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


def _finish(store: Store, result: BuildResult, names: list[str], outputs: Sequence[Output], remote: Remote,
            stream: TextIO) -> BuildResult:
    for name in names:
        current = store.get_ref(name)
        if current is None or current.digest != result.image.digest:
            store.set_ref(name, result.image.manifest_descriptor)
    for out in outputs:
        _export(store, result, out, names, remote, stream)
    return result


def _export(store: Store, result: BuildResult, out: Output, names: list[str], remote: Remote,
            stream: TextIO) -> None:
    from buildpy.cas import archive

    if out.type == "store":
        return
    if out.type == "registry":
        from buildpy.registry.push import push
        from buildpy.registry.clients import Clients

        targets = [out.name] if out.name else names
        if not targets:
            raise OptionError("--output type=registry needs an image name: give -t NAME or name=NAME")
        for target in targets:
            ref, digest = push(store, result.image.digest, target, remote.clients or Clients())
            stream.write(f"pushed {ref} ({digest})\n")
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


# --- registries and remote caches --------------------------------------------------------------


class _NoCache:
    records: dict = {}  # noqa: RUF012 - never written
    mounts: dict = {}  # noqa: RUF012


def _import_caches(store: Store, remote: Remote, blobs, progress: str, stream: TextIO):  # noqa: ANN001, ANN202
    """Every `--cache-from`, merged (the first to name a key wins). A cache that cannot be read
    is a warning, as BuildKit has it: the build goes on without it."""
    if not remote.cache_from:
        return _NoCache()
    from buildpy.registry.cache import Imported, import_cache
    from buildpy.registry.clients import Clients

    merged = Imported()
    for spec in remote.cache_from:
        try:
            got = import_cache(store, spec, remote.clients or Clients(), blobs)
        except Exception as e:
            if not getattr(e, "user_facing", False):
                raise
            stream.write(f"warning: cache import from {spec.ref or spec.path} failed: {e}\n")
            continue
        for key, rec in got.records.items():
            merged.records.setdefault(key, rec)
        for name, desc in got.mounts.items():
            merged.mounts.setdefault(name, desc)
        if progress != "quiet":
            stream.write(f"imported cache {spec.ref or spec.path}: {len(got.records)} steps"
                         + (f", {len(got.mounts)} cache mounts" if got.mounts else "") + "\n")
    return merged


def _image_fetcher(store: Store, remote: Remote, blobs, fetched: dict):  # noqa: ANN001, ANN202
    """FROM (or --from) an image the store lacks: its manifest and config now, its layers when
    a step or the image needs them."""
    def fetch(word: str, platform: str):  # noqa: ANN202
        from buildpy.registry.clients import Clients
        from buildpy.registry.pull import resolve

        resolved = resolve(store, word, remote.clients or Clients(), platform)
        blobs.add_registry(resolved.client, resolved.repo, resolved.image.layers)
        ref = resolved.reference
        name = ref.name if ref.digest else ref.with_tag(ref.tag or "latest").name
        fetched[name] = resolved.image
        return name, resolved.image

    return fetch


def _cache_mount_names(plan) -> list[str]:  # noqa: ANN001
    from buildpy.sandbox.mounts import cache_dir_name

    names = []
    for step in plan.steps():
        for m in step.mounts:
            if m.type == "cache":
                names.append(cache_dir_name(m.options.id or "", m.target))
    return list(dict.fromkeys(names))


def _restore_cache_mounts(store: Store, plan, imported, blobs, progress: str, stream: TextIO) -> None:  # noqa: ANN001
    from buildpy.registry.cache import restore_mounts
    from buildpy.sandbox.mounts import cache_root

    restored = restore_mounts(imported, _cache_mount_names(plan), cache_root(store), store, blobs)
    if restored and progress != "quiet":
        stream.write(f"restored cache mounts: {', '.join(restored)}\n")


def _export_cache(store: Store, plan, result: BuildResult, spec, remote: Remote, blobs, progress: str,  # noqa: ANN001
                  stream: TextIO) -> None:
    from buildpy.registry.cache import Entry, export, mount_layers
    from buildpy.registry.clients import Clients
    from buildpy.sandbox.mounts import cache_root

    wanted = set(plan.order)
    if spec.mode == "min":  # the steps whose layers the image holds: the target and the stages it is FROM
        wanted, index = set(), plan.target
        while index is not None:
            wanted.add(index)
            base = plan.stages[index].base
            index = base.stage if base.kind == "stage" else None
    entries = [Entry(key, rec) for stage, key, rec in result.records if stage in wanted]
    mounts = []
    if spec.cache_mounts:
        root = cache_root(store)
        mounts = mount_layers(store, [(name, root / name) for name in _cache_mount_names(plan)])
    digest = export(store, spec, entries, mounts, remote.clients or Clients(), blobs)
    if progress != "quiet":
        stream.write(f"exported cache {spec.ref or spec.path}: {len(entries)} steps"
                     + (f", {len(mounts)} cache mounts" if mounts else "") + f" ({digest})\n")


# --- where the context comes from ---------------------------------------------------------------


@contextlib.contextmanager
def local_context(store: Store, context: str, dockerfile: str | None, stdin: BinaryIO | None = None,
                  auth: object = None) -> Iterator[tuple[Path, Path]]:
    """(context dir, Dockerfile) for `build CONTEXT [-f DOCKERFILE]`: CONTEXT a directory, `-`
    (stdin), a git URL or an http(s) URL; `-f -` reads the Dockerfile from stdin. Temporary
    copies are removed when the block ends; git checkouts stay in the store (one per commit)."""
    from buildpy.planner import sources

    auth = auth or sources.NO_AUTH
    stdin = stdin if stdin is not None else sys.stdin.buffer
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    if context == "-" and dockerfile == "-":
        raise OptionError("the context and the Dockerfile cannot both be read from standard input")
    remote = context == "-" or sources.is_git_url(context) or sources.is_url(context)
    if context == "-":
        made = sources.from_stdin(stdin, store.tmp_dir)
    elif sources.is_git_url(context):
        made = sources.from_git(context, store.root, auth=auth)
    elif sources.is_url(context):
        made = sources.from_url(context, store.tmp_dir, auth)
    else:
        made = sources.Context(Path(context))
    extra: Path | None = None
    try:
        if dockerfile == "-":
            path = sources.dockerfile_from_stdin(stdin, store.tmp_dir)
            extra = path.parent
        elif dockerfile:
            # as docker: -f is a path of its own for a local context, a file inside a remote one
            path = Path(dockerfile) if not remote or os.path.isabs(dockerfile) else made.directory / dockerfile
        else:
            path = made.dockerfile or made.directory / "Dockerfile"
        yield made.directory, path
    finally:
        for tmp in (made.temporary, extra):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def named_contexts(store: Store, specs: Sequence[str], auth: object = None) -> Iterator[dict[str, tuple[str, str]]]:
    """`--build-context NAME=VALUE`: VALUE a directory, `docker-image://REF`,
    `oci-layout://PATH[:TAG|@DIGEST]`, a git URL or an http(s) tarball URL; each as
    ("image", reference or digest) or ("dir", path). Temporary copies go when the block ends."""
    from buildpy.planner import sources

    auth = auth or sources.NO_AUTH
    out: dict[str, tuple[str, str]] = {}
    temporary: list[Path] = []
    try:
        for spec in specs:
            name, eq, value = spec.partition("=")
            name = name.strip()
            if not eq or not name or not value:
                raise OptionError(f"invalid --build-context {spec!r}: expected NAME=VALUE")
            if value.startswith("docker-image://"):
                out[name] = ("image", value[len("docker-image://"):])
            elif value.startswith("oci-layout://"):
                out[name] = ("image", _from_layout(store, value[len("oci-layout://"):], spec))
            elif sources.is_git_url(value):
                out[name] = ("dir", str(sources.from_git(value, store.root, auth=auth).directory))
            elif sources.is_url(value):
                store.tmp_dir.mkdir(parents=True, exist_ok=True)
                made = sources.from_url(value, store.tmp_dir, auth)  # type: ignore[arg-type]
                if made.temporary is not None:
                    temporary.append(made.temporary)
                out[name] = ("dir", str(made.directory))
            else:
                path = Path(value).absolute()
                if not path.is_dir():
                    raise OptionError(f"--build-context {name}: {value} is not a directory")
                out[name] = ("dir", str(path))
        yield out
    finally:
        for tmp in temporary:
            shutil.rmtree(tmp, ignore_errors=True)


def _from_layout(store: Store, text: str, spec: str) -> str:
    """The manifest digest of the image an OCI layout holds (its only one, or the one tagged or
    digested as asked), its blobs copied into the store untagged."""
    import re

    from buildpy.cas import ocilayout
    from buildpy.cas.archive import open_source

    m = re.fullmatch(r"(.+?)(?:@(sha256:[0-9a-f]{64})|:([\w][\w.-]{0,127}))?", text)
    assert m is not None
    path, digest, tag = Path(m.group(1)), m.group(2), m.group(3)
    if not path.exists() and tag:  # a path with a colon in it
        path, tag = Path(text), None
    if not path.exists():
        raise OptionError(f"--build-context {spec}: no OCI layout at {path}")
    with store.lease(), open_source(store, path) as src:
        found = ocilayout.load(store, src)
    for f in found:
        if (digest and f.descriptor.digest == digest) or (tag and any(n.endswith(f":{tag}") or n == tag
                                                                       for n in f.names)):
            return f.image.digest
    if not digest and not tag and len(found) == 1:
        return found[0].image.digest
    raise OptionError(f"--build-context {spec}: the layout holds {len(found)} images and none is "
                      f"{digest or tag or 'the only one'}")
