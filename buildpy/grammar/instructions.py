"""Typed instructions: each parser `Node` becomes one frozen dataclass, validated.

BuildKit's `instructions` package is the model, with its messages. Words stay as written
(variables unexpanded, quotes of ENV/LABEL/ARG values kept): expansion happens per stage, with
the ARG and ENV in scope, in expand.py. Every mistake raises DockerfileError at its place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from buildpy.grammar.ast import Heredoc, Node, go_quote
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.flags import (
    BOOL,
    NETWORK_MODES,
    SECURITY_MODES,
    STRING,
    STRINGS,
    Device,
    FlagValue,
    Mount,
    error_at,
    error_at_offset,
    flag_offset,
    flags_end,
    parse_chmod,
    parse_device,
    parse_flags,
    parse_mount,
)
from buildpy.grammar.scanner import parse_heredoc
from buildpy.grammar.suggest import did_you_mean


@dataclass(frozen=True, slots=True)
class Instruction:
    """What every instruction has: the parser node it came from and the file it is in."""

    node: Node = field(repr=False, compare=False)
    file: str = field(default="Dockerfile", repr=False, compare=False, kw_only=True)

    @property
    def line(self) -> int:
        """The first line of the instruction (1-based)."""
        return self.node.start_line

    @property
    def end_line(self) -> int:
        """The last line, continuations and heredoc bodies included."""
        return self.node.end_line

    @property
    def col(self) -> int:
        """The column of its keyword."""
        return self.node.col

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

    @property
    def prepend_shell(self) -> bool:
        """BuildKit's name for `shell`: the stage's SHELL runs the command string."""
        return self.shell


@dataclass(frozen=True, slots=True)
class Run(Command):
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[Mount, ...] = ()  # as far as known before expansion
    mount_specs: tuple[str, ...] = ()  # as written, read again once expanded
    network: str = "default"
    security: str = "sandbox"
    devices: tuple[Device, ...] = ()


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
    trigger: Instruction | None = field(default=None, repr=False, compare=False)  # typed, for checks


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


def instruction_from_node(node: Node, file: str = "Dockerfile") -> Instruction:
    """The typed instruction of a parser node; a mistake raises DockerfileError naming `file`."""
    try:
        build = _BUILDERS.get(node.command)
        if build is None:
            raise _error(node, f"unknown instruction: {node.keyword}{did_you_mean(node.keyword, INSTRUCTION_NAMES)}")
        instruction = build(node)
    except DockerfileError as e:
        raise e.located(file=file, line=node.start_line, col=node.col) from None
    return _in_file(instruction, file)


def _in_file(instruction: Instruction, file: str) -> Instruction:
    """The instruction (and an ONBUILD's trigger) marked as from `file`."""
    if instruction.file == file:
        return instruction
    if isinstance(instruction, OnBuild) and instruction.trigger is not None:
        return replace(instruction, file=file, trigger=_in_file(instruction.trigger, file))
    return replace(instruction, file=file)


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
        devices=_devices(node, flags.get("device", ())),  # type: ignore[arg-type]
    )


def _devices(node: Node, specs: tuple[str, ...]) -> tuple[Device, ...]:
    devices = []
    for spec, index in zip(specs, _flag_indexes(node, "--device")):
        try:
            devices.append(parse_device(spec))
        except ValueError as e:
            offset = flag_offset(node, node.flags, index)
            raise error_at_offset(node, offset + len("--device=") if offset >= 0 else -1, str(e)) from None
    return tuple(devices)


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
    _at_least_one(node)
    _no_flags(node)
    defs = []
    for word in node.args:
        name, has_value, value = word.partition("=")
        if has_value and not name:
            raise error_at_offset(node, _blank_name_offset(node), "ARG names can not be blank")
        defs.append(ArgDef(name, value if has_value else None))
    return Arg(node, args=tuple(defs))


def _expose(node: Node) -> Expose:
    _at_least_one(node)
    _no_flags(node)
    return Expose(node, ports=tuple(sorted(node.args)))


def _volume(node: Node) -> Volume:
    _at_least_one(node)
    _no_flags(node)
    paths = []
    for path in node.args:
        path = path.strip()
        if not path:
            raise _error(node, "VOLUME specified can not be an empty string")
        paths.append(path)
    return Volume(node, paths=tuple(paths))


def _user(node: Node) -> User:
    value = _exactly_one(node)
    _no_flags(node)
    return User(node, user=value)


def _workdir(node: Node) -> Workdir:
    value = _exactly_one(node)
    _no_flags(node)
    return Workdir(node, path=value)


def _maintainer(node: Node) -> Maintainer:
    value = _exactly_one(node)
    _no_flags(node)
    return Maintainer(node, maintainer=value)


def _stopsignal(node: Node) -> StopSignal:
    value = _exactly_one(node)
    _no_flags(node)
    return StopSignal(node, signal=value)


_HEALTH_DURATIONS = ("interval", "timeout", "start-period", "start-interval")


def _healthcheck(node: Node) -> Healthcheck:
    _at_least_one(node)
    kind = node.args[0].upper()
    rest = node.args[1:]
    if kind == "NONE":
        given = node.flags[: node.flags.index("--")] if "--" in node.flags else node.flags
        if given:  # the options are CMD's: "HEALTHCHECK takes no flags" would mislead
            flag = given[0].partition("=")[0]
            raise error_at(node, flag, f"unknown flag: {flag} (HEALTHCHECK NONE takes no flags)")
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
        if value and value < 1_000_000:  # a negative one too: BuildKit compares with 1ms only
            raise error_at(node, f"--{name}", f"Interval \"{name}\" cannot be less than 1ms")
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
    child = node.child
    if child is None:
        raise _error(node, "ONBUILD requires at least one argument")
    _no_flags(node)
    keyword = child.keyword.upper()
    if keyword == "ONBUILD":
        raise _error(node, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if keyword in ("MAINTAINER", "FROM"):
        raise _error(node, f"{keyword} isn't allowed as an ONBUILD trigger")
    trigger = instruction_from_node(child)  # a trigger that would fail later fails now, at its line
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original)
    for doc in child.heredocs:
        expression += "\n" + doc.content + doc.name
    return OnBuild(node, expression=expression, trigger=trigger)


def _require_destination(node: Node) -> None:
    if len(node.args) < 2:
        raise _error(
            node,
            f"{node.command.upper()} requires at least two arguments, but only one was provided. "
            "Destination could not be determined",
        )


def _sources_and_dest(node: Node) -> tuple[tuple[str, ...], str, tuple[InlineSource, ...]]:
    command = node.command.upper()
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


def _is_literal(word: str) -> bool:
    """Whether expansion leaves `word` as it is (no variable, quote or escape in it)."""
    return not any(ch in word for ch in "$\\`'\"")


def _checked_chmod(node: Node, flags: dict[str, FlagValue]) -> str:
    """--chmod as written; a literal one is checked now, as BuildKit checks it once expanded."""
    chmod = str(flags.get("chmod", ""))
    if chmod and _is_literal(chmod):
        try:
            parse_chmod(chmod)
        except ValueError as e:
            raise error_at(node, "--chmod", str(e)) from None
    return chmod


_FILE_COPY_FLAGS = {"chown": STRING, "chmod": STRING, "link": BOOL, "exclude": STRINGS}


def _copy(node: Node) -> Copy:
    _require_destination(node)
    flags = parse_flags(node, node.flags, {**_FILE_COPY_FLAGS, "from": STRING, "parents": BOOL})
    sources, dest, inline = _sources_and_dest(node)
    return Copy(
        node,
        sources=sources,
        dest=dest,
        inline=inline,
        chown=str(flags.get("chown", "")),
        chmod=_checked_chmod(node, flags),
        link=bool(flags.get("link", False)),
        excludes=flags.get("exclude", ()),  # type: ignore[arg-type]
        from_=str(flags.get("from", "")),
        parents=bool(flags.get("parents", False)),
    )


def _add(node: Node) -> Add:
    _require_destination(node)
    flags = parse_flags(
        node, node.flags, {**_FILE_COPY_FLAGS, "keep-git-dir": BOOL, "checksum": STRING, "unpack": BOOL}
    )
    sources, dest, inline = _sources_and_dest(node)
    checksum = str(flags.get("checksum", ""))
    if checksum and len(sources) != 1:
        # BuildKit counts source paths only: a heredoc source is none
        raise error_at(node, "--checksum", "checksum can't be specified for multiple sources")
    return Add(
        node,
        sources=sources,
        dest=dest,
        inline=inline,
        chown=str(flags.get("chown", "")),
        chmod=_checked_chmod(node, flags),
        link=bool(flags.get("link", False)),
        excludes=flags.get("exclude", ()),  # type: ignore[arg-type]
        checksum=checksum,
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
