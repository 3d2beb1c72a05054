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

from buildpy import __version__

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
    return top


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
