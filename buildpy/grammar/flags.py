"""Instruction flags (`--name=value`): which each instruction takes, their values, RUN's mounts.

BuildKit's BFlags is the model: a flag is a string, a bool (`--link`, `--link=false`) or a
repeatable string list (`--mount`, `--exclude`). An unknown flag, a missing value or a flag
given twice is an error naming the flag's place. Nothing is accepted and then ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from buildpy.grammar.ast import Node, go_quote
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.suggest import did_you_mean

STRING, BOOL, STRINGS = "string", "bool", "strings"

FlagValue = str | bool | tuple[str, ...] | None


def error_at(node: Node, text: str, message: str) -> DockerfileError:
    """An error located at the first place `text` stands in the instruction."""
    line, col = node.find(text)
    return DockerfileError(message, line=line, col=col)


def error_at_offset(node: Node, offset: int, message: str) -> DockerfileError:
    """An error at a character offset into `node.original` (its start when the offset is -1)."""
    line, col = node.position(offset) if offset >= 0 else (node.start_line, node.col)
    return DockerfileError(message, line=line, col=col)


def flag_offset(node: Node, flags: tuple[str, ...], index: int) -> int:
    """Offset in `node.original` of `flags[index]`, -1 when not found.

    The flags before it are passed over in order, so a repeated flag is told from its first use.
    """
    offset = found = 0
    for word in flags[: index + 1]:
        name = word.partition("=")[0]
        found = node.original.find(name, offset)
        if found < 0:
            return -1
        offset = found + len(name)
    return found


def flags_end(node: Node) -> int:
    """An offset in `node.original` at or before its first argument: past the last flag's name."""
    if not node.flags:
        return 0
    last = node.flags[-1]
    found = flag_offset(node, node.flags, len(node.flags) - 1)
    if found < 0:
        return 0
    if node.original.startswith(last, found):
        return found + len(last)
    end = found  # written with quotes: the word ends at the next blank
    while end < len(node.original) and not node.original[end].isspace():
        end += 1
    return end


def parse_flags(node: Node, flags: tuple[str, ...], spec: dict[str, str]) -> dict[str, FlagValue]:
    """The values of `flags` (as the parser found them) per `spec` {name: kind}.

    A flag not given is absent from the result (so "given as false" and "not given" differ).
    """
    values: dict[str, FlagValue] = {}
    for index, word in enumerate(flags):
        if word == "--":
            break

        def error(message: str) -> DockerfileError:
            return error_at_offset(node, flag_offset(node, flags, index), message)

        if not word.startswith("--"):
            raise error(f"arg should start with -- : {word}")
        flag, has_value, value = word.partition("=")
        name = flag[2:]
        kind = spec.get(name)
        if kind is None:
            # BuildKit's wording, so its users recognise it; the hint says why for flagless ones
            if spec:
                hint = did_you_mean(name, spec, case_sensitive=True)
            else:
                hint = f" ({node.keyword.upper()} takes no flags)"
            raise error(f"unknown flag: {flag}{hint}")
        if name in values and kind != STRINGS:
            raise error(f"duplicate flag specified: {flag}")
        if kind == BOOL:
            if has_value and value == "":
                raise error(f"missing a value on flag: {flag}")
            lowered = value.lower()
            if lowered not in ("", "true", "false"):
                raise error(f"expecting boolean value for flag {flag}, not: {value}")
            values[name] = lowered != "false"
        elif not has_value:
            raise error(f"missing a value on flag: {flag}")
        elif kind == STRING:
            values[name] = value
        else:
            values[name] = (*values.get(name, ()), value)  # type: ignore[misc]
    return values


# -- RUN --mount ------------------------------------------------------------------------------

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size", "mode",
    "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True, slots=True)
class Mount:
    """One `RUN --mount=…`, with BuildKit's defaults applied."""

    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""  # a stage, an image or a named context
    readonly: bool = True
    id: str = ""  # cache id; secret id
    sharing: str = ""  # cache: shared (default) | private | locked
    required: bool = False
    size: int = 0  # tmpfs size limit in bytes, 0 = none
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None  # secret: expose as this environment variable


def parse_mount(text: str, expand: Callable[[str], str] | None = None) -> Mount:
    """A `--mount` value; `expand` substitutes variables in values.

    Without `expand` (at parse time) a field whose value holds a variable is left at its default,
    to be read once the stage's ARG and ENV are known.

    Raises ValueError with BuildKit's message; the caller adds the location.
    """
    fields = _csv_fields(text)
    values: dict[str, object] = {"type": "bind"}
    readonly_given = False
    type_known = True  # False while `type=` holds a variable: the checks by type wait for it
    for field in fields:
        key, has_value, value = field.partition("=")
        key = key.lower()
        if not has_value:
            if key in ("readonly", "ro"):
                values["readonly"], readonly_given = True, True
            elif key in ("readwrite", "rw"):
                values["readonly"], readonly_given = False, True
            elif key == "required":
                if type_known:
                    _require_type(values, key, ("secret", "ssh"))
                values["required"] = True
            else:
                raise ValueError(f"invalid field '{field}' must be a key=value pair")
            continue
        if key == "from" and "$" in value[:-1]:
            raise ValueError("'from' doesn't support variable expansion, define alias stage instead")
        if expand is not None:
            value = expand(value)
        elif "$" in value:
            if key == "type":
                type_known = False
            continue  # known only once expanded in its stage: checked then
        if key == "type":
            kind = value.lower()
            if kind not in MOUNT_TYPES:
                hint = did_you_mean(value, MOUNT_TYPES, case_sensitive=True)
                raise ValueError(f"unsupported mount type {go_quote(value)}{hint}")
            values["type"] = kind
        elif key == "from":
            values["from_"] = value
        elif key in ("source", "src"):
            values["source"] = value
        elif key in ("target", "dst", "destination"):
            values["target"] = value
        elif key in ("readonly", "ro"):
            values["readonly"], readonly_given = _parse_bool(key, value), True
        elif key in ("readwrite", "rw"):
            values["readonly"], readonly_given = not _parse_bool(key, value), True
        elif key == "required":
            if type_known:
                _require_type(values, key, ("secret", "ssh"))
            values["required"] = _parse_bool(key, value)
        elif key == "size":
            if type_known:
                _require_type(values, key, ("tmpfs",))
            values["size"] = _parse_ram_bytes(key, value)
        elif key == "id":
            values["id"] = value
        elif key == "sharing":
            mode = value.lower()
            if mode not in SHARING_MODES:
                hint = did_you_mean(value, SHARING_MODES, case_sensitive=True)
                raise ValueError(f"unsupported sharing value {go_quote(value)}{hint}")
            values["sharing"] = mode
        elif key in ("mode", "uid", "gid"):
            values[key] = _parse_uint(key, value, 8 if key == "mode" else 10)
        elif key == "env":
            values["env"] = value
        else:
            hint = did_you_mean(key, _MOUNT_KEYS, case_sensitive=True)
            raise ValueError(f"unexpected key '{key}' in '{field}'{hint}")
    if not type_known:
        return Mount(**values)  # type: ignore[arg-type]
    kind = values["type"]
    if kind not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if values.get(key) is not None:
                raise ValueError(f"{key} not allowed for {go_quote(kind)} type mounts")
    if not readonly_given:
        values["readonly"] = kind not in ("cache", "tmpfs")
    if kind == "secret":
        if values.get("from_"):
            raise ValueError("secret mount should not have a from")
        if values.get("sharing"):
            raise ValueError("secret mount should not define sharing")
        if not (values.get("source") or values.get("target") or values.get("id")):
            raise ValueError("invalid secret mount. one of source, target required")
        if values.get("source") and values.get("id"):
            raise ValueError("both source and id can't be set")
    if values.get("sharing") and kind != "cache":
        raise ValueError(f"invalid cache sharing set for {kind} mount")
    return Mount(**values)  # type: ignore[arg-type]


def _require_type(values: dict[str, object], key: str, kinds: tuple[str, ...]) -> None:
    if values["type"] not in kinds:
        raise ValueError(f"unexpected key '{key}' for mount type '{values['type']}'")


def _parse_bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid value for {key}: {value}")


def _parse_uint(key: str, value: str, base: int) -> int:
    """Go's strconv.ParseUint(value, base, 32): digits only (no sign, `0o` prefix, `_`, spaces)."""
    digits = "01234567" if base == 8 else "0123456789"
    significant = value.lstrip("0")
    if not value or any(ch not in digits for ch in value) or len(significant) > 11 or int(value, base) >= 1 << 32:
        raise ValueError(f"invalid value {value} for {key}")
    return int(value, base)


_GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _parse_ram_bytes(key: str, value: str) -> int:
    """docker/go-units RAMInBytes: binary multiples (`64m` = 64 MiB), its algorithm step by step.

    The number ends at the last digit, dot or space; a suffix is b, or k/m/g/t/p with an
    optional b or ib. Go's ParseFloat reads the number (hex floats aside).
    """
    invalid = ValueError(f"invalid value for {key}: {value}")
    sep = max(value.rfind(ch) for ch in "0123456789. ")
    if sep < 0:
        raise invalid
    if value[sep] == " ":
        number, suffix = value[:sep], value[sep + 1 :]
    else:
        number, suffix = value[: sep + 1], value[sep + 1 :]
    if not _GO_FLOAT.fullmatch(number):
        raise invalid
    size = float(number)
    if size < 0 or size == float("inf"):  # Go: negative refused; out of range is an error
        raise invalid
    suffix = suffix.lower()
    if not suffix or suffix == "b":
        return int(size)
    power = "_kmgtp".find(suffix[0])
    if len(suffix) > 3 or power < 1 or suffix[1:] not in ("", "b", "ib"):
        raise invalid
    return int(size * 1024**power)


def _csv_fields(text: str, what: str = "mounts") -> list[str]:
    """The comma-separated fields of a flag value, as BuildKit's csvvalue.Fields reads them.

    A field may be double-quoted (`""` inside is one quote); a quote anywhere else, or an
    unclosed one, is an error, and so is an empty value (Go's io.EOF).
    """
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError(f"failed to parse csv {what}: EOF")
    fields: list[str] = []
    pos = 0
    while True:
        if not text.startswith('"', pos):
            end = text.find(",", pos)
            field = text[pos:] if end < 0 else text[pos:end]
            if '"' in field:
                column = pos + field.index('"')
                raise _csv_error(what, text, column, 'bare " in non-quoted-field')
            fields.append(field)
            if end < 0:
                return fields
            pos = end + 1
            continue
        pos += 1
        field = ""
        while True:
            close = text.find('"', pos)
            if close < 0:
                raise _csv_error(what, text, pos, 'extraneous or missing " in quoted-field')
            field += text[pos:close]
            pos = close + 1
            if text.startswith('"', pos):  # a doubled quote stands for one
                field += '"'
                pos += 1
                continue
            if pos == len(text):
                fields.append(field)
                return fields
            if text[pos] == ",":
                fields.append(field)
                pos += 1
                break
            raise _csv_error(what, text, close, 'extraneous or missing " in quoted-field')


def _csv_error(what: str, text: str, index: int, problem: str) -> ValueError:
    # Go's csv.ParseError counts columns in bytes, from 1
    column = len(text[:index].encode("utf-8", "surrogatepass")) + 1
    return ValueError(f"failed to parse csv {what}: parse error on line 1, column {column}: {problem}")


# -- RUN --network / --security -----------------------------------------------------------------

NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")


# -- RUN --device -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """One `RUN --device=…`: a CDI device name (`vendor.com/class=name`), and whether it must exist."""

    name: str
    required: bool = False


def parse_device(text: str) -> Device:
    """A `--device` value as BuildKit's ParseDevice reads it; ValueError with its message.

    The first field without a known key is the name, so `vendor.com/gpu=all` is a name.
    """
    name, required = "", False
    for field in _csv_fields(text, "devices"):
        key, has_value, value = field.partition("=")
        key = key.lower()
        if not has_value:
            if key == "required":
                required = True
            elif not name:
                name = field
            else:
                raise ValueError(f"invalid field '{field}' must be a key=value pair")
        elif key == "name":
            if name:
                raise ValueError(f"device name already set to {name}")
            name = value
        elif key == "required":
            required = _parse_bool(key, value)
        elif not name:
            name = field
        else:
            raise ValueError(
                f"unexpected key '{key}' in '{field}'{did_you_mean(key, ('name', 'required'), case_sensitive=True)}"
            )
    return Device(name, required)


# -- COPY/ADD --chmod ---------------------------------------------------------------------------

_SYMBOLIC_CLAUSE = r"[ugoa]*(?:[-+=][rstwXxugo]*)+"
_SYMBOLIC_MODE = re.compile(rf"{_SYMBOLIC_CLAUSE}(?:,{_SYMBOLIC_CLAUSE})*")


def parse_chmod(text: str) -> int | str:
    """A `--chmod` value: an octal mode (an int, at most 0o7777) or a symbolic one (`u+x,go-w`).

    BuildKit reads it so when it converts COPY/ADD (after expansion); ValueError with its
    message. The symbolic grammar is BSD setmode's, which BuildKit uses.
    """
    if text and all(ch in "01234567" for ch in text) and int(text, 8) < 1 << 32:
        mode = int(text, 8)
        if mode <= 0o7777:
            return mode
        raise ValueError(_not_octal(text))
    if text[:1].isdigit() and text[:1].isascii():
        raise ValueError(_not_octal(text))  # it looks numeric: BuildKit's message for numbers
    if not _SYMBOLIC_MODE.fullmatch(text):
        raise ValueError(f"invalid chmod parameter: '{text}': invalid syntax")
    return text


def _not_octal(text: str) -> str:
    return f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"
