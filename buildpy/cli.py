"""The command line: arguments in, output out; the work is done by the packages it calls.

Each command imports what it needs when it runs, so `buildpy --version` and `buildpy parse`
pay only for what they use. A user's mistake ends in one `error: …` line and a non-zero exit;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from buildpy import __version__

if TYPE_CHECKING:  # the store is imported by the commands that use it, when they run
    from buildpy.cas.store import Store

Handler = Callable[[argparse.Namespace], int]


def _cmd_parse(args: argparse.Namespace) -> int:
    from buildpy.grammar.parser import parse

    source, name = _read_dockerfile(args.dockerfile)
    result = parse(source, name)
    if args.stages:
        from buildpy.grammar.stages import describe_stages, stages_from

        sys.stdout.write(describe_stages(stages_from(result)))
    else:
        sys.stdout.write(result.dump())
    return 0


def _read_dockerfile(path: str) -> tuple[bytes, str]:
    if path == "-":
        return sys.stdin.buffer.read(), "Dockerfile"
    try:
        with open(path, "rb") as f:
            return f.read(), os.path.basename(path) or path
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


class UsageError(Exception):
    """A mistake in how the command was called."""

    user_facing = True


# build


def _cmd_build(args: argparse.Namespace) -> int:
    from buildpy.executor.session import Remote, local_context, named_contexts

    remote = Remote(_clients(args))
    if args.cache_from or args.cache_to:
        from buildpy.registry.cache import parse_spec

        remote = Remote(remote.clients, tuple(parse_spec(c, "from") for c in args.cache_from),
                        tuple(parse_spec(c, "to") for c in args.cache_to))
    from buildpy.executor.session import parse_secret, parse_ssh
    from buildpy.planner.sources import SourceAuth

    store = _store(args)
    secrets = dict(parse_secret(s) for s in args.secret)
    ssh_agents = dict(parse_ssh(s) for s in args.ssh)
    auth = SourceAuth.from_secrets(secrets, ssh_agents)
    with local_context(store, args.context, args.file, auth=auth) as (context, dockerfile), \
            named_contexts(store, args.build_context, auth) as named:
        return _build_in(args, store, context, dockerfile, remote, named, secrets, ssh_agents, auth)


def _cmd_lint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from buildpy.checks import gate, report
    from buildpy.planner.args import parse_build_args
    from buildpy.planner.checkfacts import check_facts

    context = Path(args.context)
    dockerfile = Path(args.file) if args.file else context / "Dockerfile"
    skip = [r.strip() for item in args.skip for r in item.split(",") if r.strip()]
    facts = check_facts(context, dockerfile, _store(args))
    result, name = gate.check(context, dockerfile, parse_build_args(args.build_arg), "", facts, skip,
                              True if args.error else None)
    render = {"text": report.render_text, "json": lambda r, _n: report.render_json(r),
              "sarif": report.render_sarif}[args.format]
    sys.stdout.write(render(result, name))
    return 1 if result.findings or result.error is not None else 0


def _build_in(args: argparse.Namespace, store: Store, context, dockerfile, remote, named, secrets,  # noqa: ANN001
              ssh_agents, auth) -> int:  # noqa: ANN001
    from pathlib import Path

    from buildpy.executor.options import BuildOptions
    from buildpy.executor.session import build, parse_output
    from buildpy.planner.args import parse_build_args
    from buildpy.planner.request import BuildRequest

    from buildpy.checks import gate
    from buildpy.planner.checkfacts import check_facts

    build_args = parse_build_args(args.build_arg)
    if args.check:
        from buildpy.checks import report

        result, name = gate.check(context, dockerfile, build_args, args.platform or "",
                                  check_facts(context, dockerfile, store))
        sys.stdout.write(report.render_text(result, name))
        return 1 if result.findings or result.error is not None else 0
    if not args.no_checks:
        quiet = args.progress == "quiet"
        gate.before_build(store.root / "checks", context, dockerfile, build_args, args.platform or "",
                          check_facts(context, dockerfile, store),
                          warn=lambda line: None if quiet else print(f"warning: {line}", file=sys.stderr))
    labels = dict(item.partition("=")[::2] for item in args.label)
    request = BuildRequest(context=context, dockerfile=dockerfile, build_args=build_args,
                           target=args.target or None, platform=args.platform or "", labels=labels,
                           network=args.network, pull=args.pull, named_contexts=named, source_auth=auth)
    options = BuildOptions(
        jobs=args.jobs, no_cache=args.no_cache, no_cache_filter=frozenset(args.no_cache_filter),
        compression="" if args.compression == "uncompressed" else args.compression, network=args.network,
        secrets=secrets, allow=frozenset(args.allow), ssh_agents=ssh_agents,
    )
    outputs = [parse_output(o) for o in args.output]
    result = build(store, request, options, tags=args.tag, outputs=outputs, progress=args.progress,
                   remote=remote)
    if args.iidfile:
        Path(args.iidfile).write_text(result.image.id)
    if args.progress == "quiet":
        print(result.image.id)
    else:
        print(f"built {result.image.id} ({result.ran} ran, {result.cached} cached)", file=sys.stderr)
    return 0


def _build_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("build", help="build an image from a Dockerfile",
                            description="Build an image from a Dockerfile and its context.")
    p.set_defaults(handler=_cmd_build)
    p.add_argument("context", metavar="CONTEXT",
                   help="the build context: a directory, - (a tar or a Dockerfile on stdin), a git URL "
                        "(…/repo.git#REF:SUBDIR) or an http(s) tarball URL")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]", help="name the image")
    p.add_argument("-f", "--file", metavar="DOCKERFILE",
                   help="the Dockerfile (default CONTEXT/Dockerfile; - reads it from stdin)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K[=V]", help="set a build arg")
    p.add_argument("--build-context", action="append", default=[], metavar="NAME=DIR|docker-image://REF|…",
                   help="a named context for FROM NAME / COPY --from=NAME: a directory, docker-image://REF, "
                        "oci-layout://PATH[:TAG], a git or http(s) URL")
    p.add_argument("--target", metavar="STAGE", help="build this stage")
    p.add_argument("--no-cache", action="store_true", help="run every step (cache mounts are kept)")
    p.add_argument("--pull", action="store_true", help="ask the registry for every FROM image, even one in the store")
    p.add_argument("--no-cache-filter", action="append", default=[], metavar="STAGE",
                   help="run every step of this stage")
    p.add_argument("--network", choices=("default", "none", "host"), default="default",
                   help="the network of RUN steps")
    p.add_argument("--progress", choices=("auto", "plain", "tty", "quiet"), default="auto")
    p.add_argument("-q", "--quiet", dest="progress", action="store_const", const="quiet",
                   help="print only the image ID (as --progress quiet)")
    p.add_argument("--secret", action="append", default=[], metavar="id=ID,src=PATH|env=VAR")
    p.add_argument("--ssh", action="append", default=[], metavar="default|ID=SOCKET",
                   help="an ssh agent for RUN --mount=type=ssh (default: $SSH_AUTH_SOCK)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="a label on the image")
    p.add_argument("--jobs", type=int, default=0, metavar="N", help="steps at once (default: the core count)")
    p.add_argument("--output", "-o", action="append", default=[], metavar="type=oci|docker|local,dest=PATH")
    p.add_argument("--cache-from", action="append", default=[], metavar="SPEC")
    p.add_argument("--cache-to", action="append", default=[], metavar="SPEC")
    p.add_argument("--iidfile", metavar="FILE", help="write the image ID here")
    p.add_argument("--platform", metavar="OS/ARCH", help="the target platform (default: the host's)")
    p.add_argument("--allow", action="append", default=[], metavar="ENTITLEMENT",
                   help="network.host or security.insecure")
    p.add_argument("--compression", choices=("gzip", "zstd", "uncompressed"), default="gzip",
                   help="layer compression")
    p.add_argument("--check", action="store_true", help="run the build checks and stop (exit 1 when one fires)")
    p.add_argument("--no-checks", action="store_true", help="do not run the build checks first")
    _registry_flags(p)

    p = commands.add_parser("lint", help="run the build checks on a Dockerfile",
                            description="Run BuildKit's build checks (lint rules) on a Dockerfile; exit 1 when "
                                        "one fires.")
    p.set_defaults(handler=_cmd_lint)
    p.add_argument("context", metavar="CONTEXT", nargs="?", default=".", help="the build context (default .)")
    p.add_argument("-f", "--file", metavar="DOCKERFILE", help="the Dockerfile (default CONTEXT/Dockerfile)")
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    p.add_argument("--skip", action="append", default=[], metavar="RULE[,RULE…]", help="rules not to run (or all)")
    p.add_argument("--error", action="store_true", help="findings are errors (as # check=error=true)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K[=V]", help="build args the checks see")


# registries: pull, push, login, logout


def _clients(args: argparse.Namespace):  # noqa: ANN202 - registry.pull.Clients, imported when used
    from buildpy.registry.clients import Clients

    return Clients(_settings(args))


def _settings(args: argparse.Namespace):  # noqa: ANN202 - registry.transport.Settings
    from buildpy.registry.settings import Settings

    return Settings.from_env(insecure=args.insecure_registry + getattr(args, "insecure_here", []),
                             ca_certs=args.ca_cert + getattr(args, "ca_cert_here", []))


def _blob_progress(verb: str, quiet: bool = False):  # noqa: ANN202
    """Docker's per-blob lines: `a1b2c3d4e5f6: Pull complete`."""
    import threading

    lock = threading.Lock()
    words = {"exists": "Already exists" if verb == "Pull" else "Layer already exists",
             "done": f"{verb} complete" if verb == "Pull" else "Pushed"}

    def report(digest: str, state: str, done: int, total: int) -> None:
        if quiet or state in ("progress", "start"):
            return
        text = words.get(state) or state[:1].upper() + state[1:]
        with lock:
            print(f"{digest.split(':', 1)[-1][:12]}: {text}", file=sys.stderr, flush=True)

    return report


def _cmd_pull(args: argparse.Namespace) -> int:
    from buildpy.registry.pull import pull

    name, image = pull(_store(args), args.ref, _clients(args), args.platform or None,
                       _blob_progress("Pull", args.quiet))
    if args.quiet:
        print(_familiar(name))
    else:
        print(f"Digest: {image.digest}", file=sys.stderr)
        print(f"Downloaded {_familiar(name)}", file=sys.stderr)
        print(_familiar(name))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from buildpy.registry.push import push

    target, digest = push(_store(args), args.name, args.dest, _clients(args), _blob_progress("Push", args.quiet))
    size = _store(args).blob_size(digest) if _store(args).has_blob(digest) else 0
    if not args.quiet:
        print(f"{target.tag or target.digest}: digest: {digest} size: {size}", file=sys.stderr)
    print(f"{target.familiar_repository}@{digest}")
    return 0


def _cmd_login(args: argparse.Namespace) -> int:
    from buildpy.registry import auth

    domain = auth.registry_domain(args.registry or "")
    username = args.username
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
        password = args.password
    else:
        import getpass

        if not username:
            username = input("Username: ").strip()
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("login needs a username and a password")
    creds = auth.Credentials(username, password)
    auth.check(domain, creds, _settings(args))
    where = auth.store(domain, creds)
    if not auth.uses_helper(domain):
        print(f"WARNING! Your password will be stored unencrypted in {where}.", file=sys.stderr)
    print("Login Succeeded")
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    from buildpy.registry import auth

    domain = auth.registry_domain(args.registry or "")
    if auth.erase(domain):
        print(f"Removing login credentials for {domain}")
    else:
        print(f"Not logged in to {domain}")
    return 0


def _registry_flags(p: argparse.ArgumentParser) -> None:
    # their own dests: a subcommand's default would overwrite the same flag given before it
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT", dest="insecure_here",
                   help="allow plain http to this registry (also $BUILDPY_INSECURE_REGISTRIES)")
    p.add_argument("--ca-cert", action="append", default=[], metavar="FILE", dest="ca_cert_here",
                   help="trust this CA certificate for registries' TLS (besides the system's)")


def _registry_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("pull", help="download an image from a registry",
                            description="Download an image (the layers the store lacks) and tag it.")
    p.set_defaults(handler=_cmd_pull)
    p.add_argument("ref", metavar="REF", help="NAME[:TAG] or NAME@DIGEST")
    p.add_argument("--platform", metavar="OS/ARCH", help="the platform to pick from an index (default: the host's)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the name")
    _registry_flags(p)

    p = commands.add_parser("push", help="upload an image to a registry",
                            description="Upload an image: only the blobs the registry lacks, then its manifest.")
    p.set_defaults(handler=_cmd_push)
    p.add_argument("name", metavar="NAME[:TAG]", help="the image in the store")
    p.add_argument("dest", metavar="DEST_REF", nargs="?", help="where to push (default: NAME)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the pushed digest")
    _registry_flags(p)

    p = commands.add_parser("login", help="keep credentials for a registry",
                            description="Check credentials with the registry and keep them as docker does.")
    p.set_defaults(handler=_cmd_login)
    p.add_argument("registry", metavar="REGISTRY", nargs="?", help="the registry host (default: Docker Hub)")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _registry_flags(p)

    p = commands.add_parser("logout", help="forget credentials for a registry",
                            description="Remove the kept credentials of a registry.")
    p.set_defaults(handler=_cmd_logout)
    p.add_argument("registry", metavar="REGISTRY", nargs="?", help="the registry host (default: Docker Hub)")


# containers: run, ps, rm, commit, volume


def _cmd_run(args: argparse.Namespace) -> int:
    from buildpy.containers.run import RunOptions, run

    opts = RunOptions(
        image=args.image, command=tuple(args.command), name=args.name or "", remove=args.rm, env=tuple(args.env),
        workdir=args.workdir or "", user=args.user, volumes=tuple(args.volume), network=args.network,
        ports=tuple(args.publish), hostname=args.hostname or "", interactive=args.interactive, tty=args.tty,
        memory=args.memory or "", cpus=args.cpus, pids_limit=args.pids_limit, entrypoint=args.entrypoint,
    )
    sys.stdout.flush()
    return run(_store(args), opts, _clients(args))


def _cmd_ps(args: argparse.Namespace) -> int:
    from buildpy.containers import display
    from buildpy.containers.run import lines_for_ps
    from buildpy.containers.state import all_containers

    containers = [c for c in all_containers(_store(args)) if args.all or c.status == "running"]
    if args.quiet:
        for c in containers:
            print(c.short_id)
        return 0
    header = ["CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "LIMITS", "PORTS", "NAMES"]
    sys.stdout.write(display.table(header, lines_for_ps(containers)))
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    from buildpy.containers import state

    store = _store(args)
    status = 0
    for name in args.names:
        try:
            state.remove(store, state.find(store, name), force=args.force)
            print(name)
        except Exception as e:  # noqa: BLE001 - as docker: report, go on with the next name
            if args.debug or not getattr(e, "user_facing", False):
                raise
            print(f"error: {e}", file=sys.stderr)
            status = 1
    return status


def _cmd_commit(args: argparse.Namespace) -> int:
    from buildpy.containers import state
    from buildpy.containers.run import commit

    store = _store(args)
    image = commit(store, state.find(store, args.container), args.image, author=args.author or "",
                   message=args.message or "")
    print(image.id)
    return 0


def _cmd_volume(args: argparse.Namespace) -> int:
    from buildpy.containers import display, volumes

    store = _store(args)
    if args.action == "ls":
        if args.names:
            raise UsageError("volume ls takes no names")
        sys.stdout.write(display.table(["DRIVER", "VOLUME NAME"], [["local", n] for n in volumes.names(store)]))
        return 0
    if args.action == "create":
        for name in args.names:
            volumes.ensure(store, name)
            print(name)
        return 0
    if not args.names:
        raise UsageError("volume rm needs a name")
    for name in args.names:
        volumes.remove(store, name, force=args.force)
        print(name)
    return 0


def _cmd_tree(args: argparse.Namespace) -> int:
    import json

    from buildpy.containers import tree

    store = _store(args)
    if args.affected:
        found = tree.affected(store, args.affected)
        sys.stdout.write(json.dumps(tree.affected_json(found), indent=2) + "\n" if args.json
                         else tree.render_affected(found))
        return 0
    errors: list[str] = []
    root = tree.build_tree(store, errors)
    for e in errors:
        print(f"warning: {e}", file=sys.stderr)
    sys.stdout.write(json.dumps(tree.tree_json(root), indent=2) + "\n" if args.json else tree.render_tree(root))
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    import json

    from buildpy.containers import history

    rows = history.history(_store(args), args.image)
    if args.json:
        sys.stdout.write(json.dumps(history.history_json(rows), indent=2) + "\n")
    elif args.quiet:
        for r in rows:
            print(r.id or "<missing>")
    else:
        sys.stdout.write(history.render_history(rows, no_trunc=args.no_trunc))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from buildpy.api.server import serve

    host = args.host or ("unix:///run/buildpy.sock" if os.geteuid() == 0 else
                         f"unix://{os.environ.get('XDG_RUNTIME_DIR') or '/tmp'}/buildpy.sock")
    return serve(_store(args), host)


def _container_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="serve the Docker Engine API on a Unix socket",
                            description="Serve the Docker Engine API (the part that builds, moves and runs "
                                        "images) on a Unix socket, for the docker CLI, docker-py and compose.")
    p.set_defaults(handler=_cmd_serve)
    p.add_argument("--host", metavar="unix:///PATH",
                   help="the socket (default /run/buildpy.sock as root, else $XDG_RUNTIME_DIR/buildpy.sock)")

    p = commands.add_parser("tree", help="the images as the tree of their shared layers",
                            description="Draw the images as the tree of their shared layers; with --affected, "
                                        "list what contains a layer or is built on an image.")
    p.set_defaults(handler=_cmd_tree)
    p.add_argument("--affected", metavar="LAYER|IMAGE",
                   help="every image containing this layer (diffID or blob digest, or a 12+ hex prefix), "
                        "or built on this image")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = commands.add_parser("history", help="an image's layers and how each was made",
                            description="Show an image's history: created_by, size, and empty entries.")
    p.set_defaults(handler=_cmd_history)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="do not shorten CREATED BY")
    p.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = commands.add_parser("run", help="run a command in a new container",
                            description="Run an image's command (or CMD...) in a new sandboxed container.")
    p.set_defaults(handler=_cmd_run)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", metavar="CMD", nargs=argparse.REMAINDER, help="replaces the image's CMD")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", help="name the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    p.add_argument("-w", "--workdir", metavar="DIR", help="the working directory")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="the user to run as")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="bind a host dir (absolute or ./path) or a named volume")
    p.add_argument("--network", choices=("private", "none", "host"), default="private",
                   help="private (own namespace; slirp4netns uplink where installed), none, host")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOSTPORT:CTRPORT",
                   help="publish a container port on the host (needs slirp4netns)")
    p.add_argument("--hostname", metavar="NAME")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    p.add_argument("-t", "--tty", action="store_true", help="give the container a terminal")
    p.add_argument("--memory", "-m", metavar="BYTES", help="memory limit (e.g. 64m, 1g)")
    p.add_argument("--cpus", type=float, metavar="N", help="CPU limit (e.g. 0.5)")
    p.add_argument("--pids-limit", type=int, metavar="N", help="process limit")
    p.add_argument("--entrypoint", metavar="CMD", help="replace the image's ENTRYPOINT")
    _registry_flags(p)

    p = commands.add_parser("ps", help="list containers", description="List running (with -a, all) containers.")
    p.set_defaults(handler=_cmd_ps)
    p.add_argument("-a", "--all", action="store_true", help="also the containers that exited")
    p.add_argument("-q", "--quiet", action="store_true", help="only IDs")

    p = commands.add_parser("rm", help="remove containers", description="Remove containers and their changes.")
    p.set_defaults(handler=_cmd_rm)
    p.add_argument("names", metavar="NAME", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="also a running one's record")

    p = commands.add_parser("commit", help="make an image of a container's change",
                            description="The container's change becomes a new layer on its image.")
    p.set_defaults(handler=_cmd_commit)
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("image", metavar="IMAGE[:TAG]")
    p.add_argument("-a", "--author")
    p.add_argument("-m", "--message")

    p = commands.add_parser("volume", help="named volumes: ls, create, rm",
                            description="List, create or remove named volumes.")
    p.set_defaults(handler=_cmd_volume)
    p.add_argument("action", choices=("ls", "create", "rm"))
    p.add_argument("names", metavar="NAME", nargs="*")
    p.add_argument("-f", "--force", action="store_true", help="rm: even if a container used it")


# the store: images, tag, rmi, inspect, load, export, prune, fsck


def _store(args: argparse.Namespace) -> Store:
    from buildpy.cas.store import Store

    return Store(args.root)


def _cmd_images(args: argparse.Namespace) -> int:
    import time

    from buildpy.cas.reference import InvalidReference, parse, tagged_images
    from buildpy.containers import display

    now = time.time()

    store = _store(args)
    errors: list[str] = []
    rows: list[tuple[float, list[str]]] = []
    for t in tagged_images(store, errors):
        try:
            ref = parse(t.name)
            repo, tag = ref.familiar_repository, ref.tag or "<none>"
        except InvalidReference:
            repo, tag = t.name, "<none>"
        created = display.parse_time(t.image.config.get("created"))
        image_id = t.image.id if args.no_trunc else t.image.id.partition(":")[2][:12]
        cells = [repo, tag, image_id, display.ago(created, now), display.human_size(t.image.size)]
        rows.append((created or 0.0, cells))
    rows.sort(key=lambda r: -r[0])  # newest first, as docker lists them (stable: by name within)
    if args.quiet:
        seen: set[str] = set()
        for _, cells in rows:
            if cells[2] not in seen:
                seen.add(cells[2])
                print(cells[2])
    else:
        sys.stdout.write(display.table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], [c for _, c in rows]))
    for e in errors:
        print(f"warning: {e} (run `buildpy fsck`)", file=sys.stderr)
    return 0


def _cmd_tag(args: argparse.Namespace) -> int:
    from buildpy.cas.reference import lookup, parse

    store = _store(args)
    dst = parse(args.dst, allow_digest=False)
    with store.lease():  # SRC's blobs must outlive a concurrent rmi + prune until DST names them
        _, desc = lookup(store, args.src)
        store.set_ref(dst.name, desc)
    return 0


def _cmd_rmi(args: argparse.Namespace) -> int:
    from buildpy.cas.reference import refs_named

    store = _store(args)
    failed = False
    for text in args.names:
        try:
            names = refs_named(store, text)
            if len(names) > 1 and not args.force:
                raise UsageError(
                    f"conflict: unable to delete {text} (must be forced) - image is referenced "
                    f"in {len(names)} references; use -f or name the reference"
                )
            for n in names:
                if store.delete_ref(n) is not None:
                    print(f"Untagged: {_familiar(n)}")
        except Exception as e:  # noqa: BLE001 - as docker: report, go on with the next name
            if args.debug or not getattr(e, "user_facing", False):
                raise
            print(f"error: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from buildpy.cas.reference import refs_to, resolve

    store = _store(args)
    with store.lease():
        name, image = resolve(store, args.name)
        out = {
            "name": name,
            "id": image.id,
            "digest": image.digest,
            "mediaType": image.manifest_descriptor.media_type,
            "refs": refs_to(store, image),
            "size": image.size,
            "manifest": image.manifest,
            "config": image.config,
        }
    sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    if not os.path.exists(args.path):
        raise UsageError(f"cannot load {args.path}: no such file or directory")
    from buildpy.cas import archive

    store = _store(args)
    with store.lease():
        loaded = archive.load(store, args.path)
    for name, image in loaded:
        print(f"Loaded image: {_familiar(name)}" if name else f"Loaded image ID: {image.id}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from buildpy.cas import archive

    store = _store(args)
    with store.lease():  # the images' blobs stay while we read them, whatever rmi + prune do
        names = archive.ref_names(store, args.names)
        if args.docker:
            archive.export_docker(store, names, args.output)
        else:
            archive.export_oci(store, names, args.output)
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from buildpy.containers import display
    from buildpy.containers.prune import prune

    pruned = prune(_store(args), cache_mounts=args.cache_mounts)
    print(f"Deleted blobs: {pruned.blobs_removed}")
    if pruned.snapshots_removed:
        print(f"Deleted layer snapshots: {pruned.snapshots_removed}")
    print(f"Total reclaimed space: {display.human_size(pruned.bytes_freed, 4)}")
    return 0


def _cmd_fsck(args: argparse.Namespace) -> int:
    from buildpy.cas.gc import fsck

    store = _store(args)
    problems = fsck(store)
    for p in problems:
        print(p)
    errors = sum(p.level == "error" for p in problems)
    if errors:
        print(f"error: store {store.root} has {errors} problem(s)", file=sys.stderr)
        return 1
    print(f"store {store.root} is consistent")
    return 0


def _familiar(name: str) -> str:
    from buildpy.cas.reference import InvalidReference, parse

    try:
        return parse(name).familiar
    except InvalidReference:
        return name


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="buildpy",
        description="Build container images from Dockerfiles, without a daemon.",
    )
    top.add_argument("--version", action="version", version=f"buildpy {__version__}")
    top.add_argument("--debug", action="store_true", help="show tracebacks and internal detail")
    top.add_argument(
        "--root",
        metavar="DIR",
        default=os.environ.get("BUILDPY_ROOT"),
        help="the store (default $BUILDPY_ROOT, else $XDG_DATA_HOME/buildpy)",
    )
    top.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                     help="allow plain http to this registry (also $BUILDPY_INSECURE_REGISTRIES)")
    top.add_argument("--ca-cert", action="append", default=[], metavar="FILE",
                     help="trust this CA certificate for registries' TLS (besides the system's)")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "parse",
        help="print a Dockerfile's instructions as BuildKit's parser dumps them",
        description="Print the instruction list of DOCKERFILE in BuildKit's dump format.",
    )
    p.add_argument("dockerfile", metavar="DOCKERFILE", help="the Dockerfile, or - for stdin")
    p.add_argument(
        "--stages", action="store_true", help="print the stages, what each depends on, and the build order"
    )
    p.set_defaults(handler=_cmd_parse)
    _build_command(commands)
    _store_commands(commands)
    _registry_commands(commands)
    _container_commands(commands)
    return top


def _store_commands(commands: argparse._SubParsersAction) -> None:
    def add(name: str, help: str, description: str, handler: Handler) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=description)
        p.set_defaults(handler=handler)
        return p

    p = add("images", "list the images in the store", "List tagged images, newest first.", _cmd_images)
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")

    p = add("tag", "make DST name the image SRC names", "Create a tag DST that refers to SRC.", _cmd_tag)
    p.add_argument("src", metavar="SRC", help="image name, ID or digest")
    p.add_argument("dst", metavar="DST", help="new NAME[:TAG]")

    p = add("rmi", "remove image references", "Untag images; their blobs stay until `buildpy prune`.", _cmd_rmi)
    p.add_argument("names", metavar="NAME", nargs="+", help="image name, ID or digest")
    p.add_argument("-f", "--force", action="store_true", help="untag every reference to an image ID")

    p = add("inspect", "print an image's manifest and config as JSON",
            "Print an image's manifest and config as JSON.", _cmd_inspect)
    p.add_argument("name", metavar="NAME", help="image name, ID or digest")

    p = add("load", "load images from an OCI layout or docker-archive",
            "Load an OCI layout (dir or tar) or a docker-archive tar.", _cmd_load)
    p.add_argument("path", metavar="PATH")

    p = add("export", "write images as an OCI layout or docker-archive",
            "Write images as an OCI layout (a dir, or a tar if PATH ends .tar) or a docker-archive tar.",
            _cmd_export)
    fmt = p.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--oci", action="store_true", help="an OCI image layout (dir, or tar when PATH ends .tar)")
    fmt.add_argument("--docker", action="store_true", help="a docker-archive tar (docker load / podman load)")
    p.add_argument("-o", "--output", metavar="PATH", required=True)
    p.add_argument("names", metavar="NAME[:TAG]", nargs="+")

    p = add("prune", "remove blobs no image reaches",
            "Remove blobs no reference reaches and leftovers of interrupted writes.", _cmd_prune)
    p.add_argument("--cache-mounts", action="store_true", help="also empty the RUN --mount=type=cache directories")

    add("fsck", "check every blob and reference",
        "Check every blob's digest and every reference; exit 1 if the store is broken.", _cmd_fsck)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into exit codes
        if args.debug:
            raise
        if getattr(e, "user_facing", False):
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"error: internal error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return 70
