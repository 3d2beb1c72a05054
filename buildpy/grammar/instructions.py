"""Typed instructions: each parser `Node` becomes one frozen dataclass, validated.

BuildKit's `instructions` package is the model, with its messages. Words stay as written
(variables unexpanded, quotes of ENV/LABEL/ARG values kept): expansion happens per stage, with
the ARG and ENV in scope, in expand.py. Every mistake raises DockerfileError at its place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from buildpy.grammar.ast import Heredoc, Node, go_quote
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.flags import (
    BOOL,
    NETWORK_MODES,
    SECURITY_MODES,
    STRING,
    STRINGS,
    Mount,
    error_at,
    error_at_offset,
    flag_offset,
    flags_end,
    parse_flags,
    parse_mount,
)
from buildpy.grammar.scanner import parse_heredoc
from buildpy.grammar.suggest import did_you_mean


@dataclass(frozen=True, slots=True)
class Instruction:
    node: Node = field(repr=False, compare=False)

    @property
    def line(self) -> int:
        return self.node.start_line

    @property
    def text(self) -> str:
        """The instruction as written (continuations joined), for messages and history."""
        return self.node.original.strip()


@dataclass(frozen=True, slots=True)
class From(Instruction):
    image: str = ""
    name: str | None = None  # lower-cased, as BuildKit keys stages
    platform: str = ""


@dataclass(frozen=True, slots=True)
class Command(Instruction):
    """RUN, CMD and ENTRYPOINT: an exec list, or (`shell` True) one string for the SHELL."""

    args: tuple[str, ...] = ()
    shell: bool = True  # shell form: args is (command string,) to run with the stage's SHELL


@dataclass(frozen=True, slots=True)
class Run(Command):
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[Mount, ...] = ()  # as far as known before expansion
    mount_specs: tuple[str, ...] = ()  # as written, read again once expanded
    network: str = "default"
    security: str = "sandbox"
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cmd(Command):
    pass


@dataclass(frozen=True, slots=True)
class Entrypoint(Command):
    pass


@dataclass(frozen=True, slots=True)
class Shell(Instruction):
    shell: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Env(Instruction):
    pairs: tuple[tuple[str, str], ...] = ()
    legacy: bool = False  # `ENV key value` (the LegacyKeyValueFormat check reports it)


@dataclass(frozen=True, slots=True)
class Label(Instruction):
    pairs: tuple[tuple[str, str], ...] = ()
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class ArgDef:
    name: str
    default: str | None = None  # None: declared without a value


@dataclass(frozen=True, slots=True)
class Arg(Instruction):
    args: tuple[ArgDef, ...] = ()


@dataclass(frozen=True, slots=True)
class Expose(Instruction):
    ports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Volume(Instruction):
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class User(Instruction):
    user: str = ""


@dataclass(frozen=True, slots=True)
class Workdir(Instruction):
    path: str = ""


@dataclass(frozen=True, slots=True)
class Maintainer(Instruction):
    maintainer: str = ""


@dataclass(frozen=True, slots=True)
class StopSignal(Instruction):
    signal: str = ""


@dataclass(frozen=True, slots=True)
class Healthcheck(Instruction):
    """`test` as the image config holds it: ["NONE"], ["CMD", …] or ["CMD-SHELL", command]."""

    test: tuple[str, ...] = ()
    interval: int = 0  # nanoseconds, 0 = the runtime's default
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class OnBuild(Instruction):
    expression: str = ""  # the trigger as the image config stores it


@dataclass(frozen=True, slots=True)
class InlineSource:
    """A heredoc standing for a COPY/ADD source file."""

    name: str
    data: str
    expand: bool


@dataclass(frozen=True, slots=True)
class FileCopy(Instruction):
    sources: tuple[str, ...] = ()
    dest: str = ""
    inline: tuple[InlineSource, ...] = ()
    chown: str = ""
    chmod: str = ""
    link: bool = False
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Copy(FileCopy):
    from_: str = ""
    parents: bool = False


@dataclass(frozen=True, slots=True)
class Add(FileCopy):
    checksum: str = ""
    keep_git_dir: bool | None = None
    unpack: bool | None = None


INSTRUCTION_NAMES = (
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
)


def instruction_from_node(node: Node) -> Instruction:
    """The typed instruction of a parser node; DockerfileError (file left to the caller)."""
    build = _BUILDERS.get(node.command)
    if build is None:
        raise DockerfileError(
            f"unknown instruction: {node.keyword}{did_you_mean(node.keyword, INSTRUCTION_NAMES)}",
            line=node.start_line,
            col=node.col,
        )
    try:
        return build(node)
    except DockerfileError as e:
        raise e.located(line=node.start_line, col=node.col) from None


def _error(node: Node, message: str) -> DockerfileError:
    return DockerfileError(message, line=node.start_line, col=node.col)


def _no_flags(node: Node) -> None:
    parse_flags(node, node.flags, {})


def _at_least_one(node: Node) -> None:
    if not node.args:
        raise _error(node, f"{node.command.upper()} requires at least one argument")


def _exactly_one(node: Node) -> str:
    if len(node.args) != 1:
        raise _error(node, f"{node.command.upper()} requires exactly one argument")
    return node.args[0]


_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")


def _from(node: Node) -> From:
    args = node.args
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise error_at_offset(
                node,
                node.original.rfind(args[2]),  # the last word: not the image, which may be alike
                f"invalid name for build stage: \"{args[2]}\", name can't start with a number or contain symbols",
            )
    elif len(args) != 1:
        raise _error(node, "FROM requires either one or three arguments")
    flags = parse_flags(node, node.flags, {"platform": STRING})
    return From(node, image=args[0], name=name, platform=str(flags.get("platform", "")))


def _command_args(node: Node) -> tuple[tuple[str, ...], bool]:
    if node.json:
        return node.args, False
    return ((node.args[0],) if node.args else ()), True


def _run(node: Node) -> Run:
    flags = parse_flags(
        node, node.flags, {"mount": STRINGS, "network": STRING, "security": STRING, "device": STRINGS}
    )
    network = str(flags.get("network", "default"))
    if network not in NETWORK_MODES:
        raise error_at(node, "--network", f"invalid network mode \"{network}\"{did_you_mean(network, NETWORK_MODES)}")
    security = str(flags.get("security", "sandbox"))
    if security not in SECURITY_MODES:
        raise error_at(node, "--security", f"security \"{security}\" is not valid")
    specs: tuple[str, ...] = flags.get("mount", ())  # type: ignore[assignment]
    mounts = []
    for spec, index in zip(specs, _flag_indexes(node, "--mount")):
        try:
            # fields holding variables are read after expansion, in their stage (expand.py)
            mounts.append(parse_mount(spec))
        except ValueError as e:
            # at the value of this --mount (an identical one before it is passed over)
            offset = flag_offset(node, node.flags, index)
            raise error_at_offset(node, offset + len("--mount=") if offset >= 0 else -1, str(e)) from None
    args, shell = _command_args(node)
    if not args and not node.heredocs:
        raise _error(node, "RUN requires at least one argument")
    return Run(
        node,
        args=args,
        shell=shell,
        heredocs=node.heredocs,
        mounts=tuple(mounts),
        mount_specs=specs,
        network=network,
        security=security,
        devices=flags.get("device", ()),  # type: ignore[arg-type]
    )


def _flag_indexes(node: Node, name: str) -> list[int]:
    """The indexes in `node.flags` of each use of the flag `name` (`--mount`)."""
    indexes = []
    for index, word in enumerate(node.flags):
        if word == "--":
            break
        if word.partition("=")[0] == name:
            indexes.append(index)
    return indexes


def _blank_name_offset(node: Node) -> int:
    """Offset of the first word that starts with `=` (a blank ENV/LABEL/ARG name), else -1.

    Quoted text is passed over: `a="b =c"` holds no such word.
    """
    text = node.original
    quote = ""
    i = flags_end(node) or len(node.keyword)
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quote != "'":
            i += 2
            continue
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "=" and text[i - 1].isspace():
            return i
        i += 1
    return -1


def _exec_or_shell(kind: type[Cmd] | type[Entrypoint]):
    """CMD and ENTRYPOINT: no flags, exec or shell form."""

    def build(node: Node) -> Command:
        _no_flags(node)
        args, shell = _command_args(node)
        return kind(node, args=args, shell=shell)

    return build


def _shell(node: Node) -> Shell:
    _no_flags(node)
    if not node.args:
        raise _error(node, "SHELL requires at least one argument")
    if not node.json:
        raise _error(node, "SHELL requires the arguments to be in JSON form")
    return Shell(node, shell=node.args)


def _pairs(node: Node) -> tuple[tuple[tuple[str, str], ...], bool]:
    """ENV/LABEL words come as (key, value, separator) triples from the parser."""
    if not node.args:
        raise _error(node, f"{node.command.upper()} requires at least one argument")
    if len(node.args) % 3:
        raise _error(node, f"Bad input to {node.command.upper()}, too many arguments")
    pairs = []
    for i in range(0, len(node.args), 3):
        key, value = node.args[i], node.args[i + 1]
        if not key:
            raise error_at_offset(node, _blank_name_offset(node), f"{node.command.upper()} names can not be blank")
        pairs.append((key, value))
    return tuple(pairs), node.args[2] == ""


def _key_values(kind: type[Env] | type[Label]):
    """ENV and LABEL: no flags, key=value pairs (or the legacy `key value`)."""

    def build(node: Node) -> Env | Label:
        _no_flags(node)
        pairs, legacy = _pairs(node)
        return kind(node, pairs=pairs, legacy=legacy)

    return build


def _arg(node: Node) -> Arg:
    _no_flags(node)
    _at_least_one(node)
    defs = []
    for word in node.args:
        name, has_value, value = word.partition("=")
        if has_value and not name:
            raise error_at_offset(node, _blank_name_offset(node), "ARG names can not be blank")
        defs.append(ArgDef(name, value if has_value else None))
    return Arg(node, args=tuple(defs))


def _expose(node: Node) -> Expose:
    _no_flags(node)
    _at_least_one(node)
    return Expose(node, ports=tuple(sorted(node.args)))


def _volume(node: Node) -> Volume:
    _no_flags(node)
    _at_least_one(node)
    paths = []
    for path in node.args:
        path = path.strip()
        if not path:
            raise _error(node, "VOLUME specified can not be an empty string")
        paths.append(path)
    return Volume(node, paths=tuple(paths))


def _user(node: Node) -> User:
    _no_flags(node)
    return User(node, user=_exactly_one(node))


def _workdir(node: Node) -> Workdir:
    _no_flags(node)
    return Workdir(node, path=_exactly_one(node))


def _maintainer(node: Node) -> Maintainer:
    _no_flags(node)
    return Maintainer(node, maintainer=_exactly_one(node))


def _stopsignal(node: Node) -> StopSignal:
    _no_flags(node)
    return StopSignal(node, signal=_exactly_one(node))


_HEALTH_DURATIONS = ("interval", "timeout", "start-period", "start-interval")


def _healthcheck(node: Node) -> Healthcheck:
    _at_least_one(node)
    kind = node.args[0].upper()
    rest = node.args[1:]
    if kind == "NONE":
        given = node.flags[: node.flags.index("--")] if "--" in node.flags else node.flags
        if given:  # the options are CMD's: "HEALTHCHECK takes no flags" would mislead
            flag = given[0].partition("=")[0]
            raise error_at(node, flag, f"HEALTHCHECK NONE takes no flags, not {flag}")
        if rest:
            raise _error(node, "HEALTHCHECK NONE takes no arguments")
        return Healthcheck(node, test=("NONE",))
    flags = parse_flags(node, node.flags, {name: STRING for name in (*_HEALTH_DURATIONS, "retries")})
    if kind != "CMD":
        offset = node.original.find(node.args[0], flags_end(node))
        raise error_at_offset(node, offset, f"Unknown type \"{node.args[0].upper()}\" in HEALTHCHECK (try CMD)")
    if not rest:
        raise _error(node, "Missing command after HEALTHCHECK CMD")
    test = ("CMD", *rest) if node.json else ("CMD-SHELL", rest[0])
    durations = {}
    for name in _HEALTH_DURATIONS:
        text = str(flags.get(name, ""))
        try:
            value = parse_go_duration(text) if text else 0
        except ValueError as e:
            raise error_at(node, f"--{name}", str(e)) from None
        if 0 < value < 1_000_000:
            raise error_at(node, f"--{name}", f"Interval \"{name}\" cannot be less than 1ms")
        if value < 0:
            raise error_at(node, f"--{name}", f"Interval \"{name}\" cannot be negative")
        durations[name.replace("-", "_")] = value
    retries = 0
    if "retries" in flags:
        text = str(flags["retries"])
        try:
            retries = _parse_int32(text)
        except ValueError as e:
            raise error_at(node, "--retries", str(e)) from None
        if retries < 0:
            raise error_at(node, "--retries", f"--retries cannot be negative ({retries})")
    return Healthcheck(node, test=test, retries=retries, **durations)


_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DIGITS = "0123456789"


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration (`1h30m`, `2.5s`, `300ms`), in nanoseconds.

    A port of Go's algorithm: integer arithmetic, fractions truncated to the nanosecond, the
    int64 range; ValueError with Go's message (`time: missing unit in duration "10"`).
    """
    invalid = ValueError(f"time: invalid duration {_time_quote(text)}")
    s, negative = text, False
    if s[:1] in ("-", "+"):
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    limit = 1 << 63
    total = 0
    while s:
        if s[0] != "." and s[0] not in _DIGITS:
            raise invalid
        i = whole = 0
        while i < len(s) and s[i] in _DIGITS:
            whole = whole * 10 + int(s[i])
            if whole > limit:
                raise invalid
            i += 1
        s, pre = s[i:], i > 0
        fraction, scale, post = 0, 1.0, False
        if s[:1] == ".":
            s = s[1:]
            i, overflow = 0, False
            while i < len(s) and s[i] in _DIGITS:
                # Go stops adding precision once the fraction would overflow
                if not overflow:
                    grown = fraction * 10 + int(s[i])
                    if fraction > (limit - 1) // 10 or grown > limit:
                        overflow = True
                    else:
                        fraction, scale = grown, scale * 10
                i += 1
            s, post = s[i:], i > 0
        if not pre and not post:
            raise invalid  # no digits: ".s"
        i = 0
        while i < len(s) and s[i] != "." and s[i] not in _DIGITS:
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {_time_quote(text)}")
        unit_name, s = s[:i], s[i:]
        unit = _GO_UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"time: unknown unit {_time_quote(unit_name)} in duration {_time_quote(text)}")
        if whole > limit // unit:
            raise invalid
        value = whole * unit
        if fraction:
            value += int(float(fraction) * (float(unit) / scale))  # Go's float64 step, truncated
            if value > limit:
                raise invalid
        total += value
        if total > limit:
            raise invalid
    if negative:
        return -total
    if total > limit - 1:
        raise invalid
    return total


def _time_quote(s: str) -> str:
    """Go time package's `quote`: double quotes; `"` and `\\` escaped; other bytes as \\xNN."""
    out = ['"']
    for ch in s:
        if ord(ch) >= 0x80 or ch < " ":
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    out.append('"')
    return "".join(out)


_INT = re.compile(r"[+-]?[0-9]+")


def _parse_int32(text: str) -> int:
    """Go's strconv.ParseInt(text, 10, 32), with its error messages."""
    if not _INT.fullmatch(text):
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if not -(1 << 31) <= value < 1 << 31:
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    return value


def _onbuild(node: Node) -> OnBuild:
    _no_flags(node)
    child = node.child
    if child is None:
        raise _error(node, "ONBUILD requires at least one argument")
    trigger = child.keyword.upper()
    if trigger == "ONBUILD":
        raise _error(node, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise _error(node, f"{trigger} isn't allowed as an ONBUILD trigger")
    instruction_from_node(child)  # a trigger that would fail later fails now, at its line
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original)
    for doc in child.heredocs:
        expression += "\n" + doc.content + doc.name
    return OnBuild(node, expression=expression)


def _sources_and_dest(node: Node) -> tuple[tuple[str, ...], str, tuple[InlineSource, ...]]:
    command = node.command.upper()
    if len(node.args) < 2:
        raise _error(
            node,
            f"{command} requires at least two arguments, but only one was provided. Destination could not be determined",
        )
    *sources, dest = node.args
    if parse_heredoc(dest) is not None:
        # the last word: a source may be written alike
        raise error_at_offset(node, node.original.rfind(dest), f"{command} cannot accept a heredoc as a destination")
    docs = {doc.name: doc for doc in node.heredocs}
    paths, inline = [], []
    for source in sources:
        opener = parse_heredoc(source) if not node.json else None
        if opener is None:
            paths.append(source)
            continue
        doc = docs.get(opener.name)
        content = doc.body() if doc is not None else ""
        inline.append(InlineSource(opener.name, content, opener.expand))
    return tuple(paths), dest, tuple(inline)


def _copy(node: Node) -> Copy:
    flags = parse_flags(
        node,
        node.flags,
        {"chown": STRING, "chmod": STRING, "from": STRING, "link": BOOL, "parents": BOOL, "exclude": STRINGS},
    )
    sources, dest, inline = _sources_and_dest(node)
    return Copy(
        node,
        sources=sources,
        dest=dest,
        inline=inline,
        chown=str(flags.get("chown", "")),
        chmod=str(flags.get("chmod", "")),
        link=bool(flags.get("link", False)),
        excludes=flags.get("exclude", ()),  # type: ignore[arg-type]
        from_=str(flags.get("from", "")),
        parents=bool(flags.get("parents", False)),
    )


def _add(node: Node) -> Add:
    flags = parse_flags(
        node,
        node.flags,
        {
            "chown": STRING,
            "chmod": STRING,
            "link": BOOL,
            "keep-git-dir": BOOL,
            "checksum": STRING,
            "unpack": BOOL,
            "exclude": STRINGS,
        },
    )
    sources, dest, inline = _sources_and_dest(node)
    return Add(
        node,
        sources=sources,
        dest=dest,
        inline=inline,
        chown=str(flags.get("chown", "")),
        chmod=str(flags.get("chmod", "")),
        link=bool(flags.get("link", False)),
        excludes=flags.get("exclude", ()),  # type: ignore[arg-type]
        checksum=str(flags.get("checksum", "")),
        keep_git_dir=flags.get("keep-git-dir"),  # type: ignore[arg-type]
        unpack=flags.get("unpack"),  # type: ignore[arg-type]
    )


_BUILDERS = {
    "add": _add,
    "arg": _arg,
    "cmd": _exec_or_shell(Cmd),
    "copy": _copy,
    "entrypoint": _exec_or_shell(Entrypoint),
    "env": _key_values(Env),
    "expose": _expose,
    "from": _from,
    "healthcheck": _healthcheck,
    "label": _key_values(Label),
    "maintainer": _maintainer,
    "onbuild": _onbuild,
    "run": _run,
    "shell": _shell,
    "stopsignal": _stopsignal,
    "user": _user,
    "volume": _volume,
    "workdir": _workdir,
}
