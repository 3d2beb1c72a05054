"""Which checks run: the `# check=` parser directive, per-instruction `# check=` comments, and
the command line's `--skip`/`--error`, as BuildKit's linter reads them (linter.go).

Syntax (BuildKit's ParseLintOptions): up to three `;`-separated `key=value` options,
`skip=all|Rule,Rule`, `experimental=all|Rule,Rule` and `error=BOOL` (Go's ParseBool). Any
other key, a part without `=`, or a bad boolean makes the whole directive invalid.

A skip never silences an experimental rule; only `experimental=` turns one on (BuildKit's rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from buildpy.grammar.errors import DockerfileError


@dataclass(frozen=True, slots=True)
class CheckConfig:
    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False  # findings fail the build / make `lint` report errors
    experimental: frozenset[str] = frozenset()
    experimental_all: bool = False

    def enabled(self, rule: str, experimental: bool = False) -> bool:
        """Whether `rule` runs under this configuration."""
        if experimental:
            return self.experimental_all or rule in self.experimental
        return not self.skip_all and rule not in self.skip


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# BuildKit's directive line: `#` then name=value, Go's \s around the `=`
_DIRECTIVE = re.compile(r"^#[\t\n\v\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\v\f\r ]*=[\t\n\v\f\r ]*(.+?)[\t\n\v\f\r ]*$")
_KNOWN = frozenset({"syntax", "escape", "check"})


def parse_options(text: str) -> CheckConfig:
    """`skip=A,B;error=true` → CheckConfig; ValueError with BuildKit's wording when invalid."""
    text = text.strip()
    if not text:
        return CheckConfig()
    skip: frozenset[str] = frozenset()
    experimental: frozenset[str] = frozenset()
    skip_all = experimental_all = error = False
    for part in text.split(";", 2):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"invalid check option \"{part}\"")
        key, value = key.strip(), value.strip()
        if key == "skip":
            if value == "all":
                skip_all = True
            else:
                skip = frozenset(v.strip() for v in value.split(","))
        elif key == "experimental":
            if value == "all":
                experimental_all = True
            else:
                experimental = frozenset(v.strip() for v in value.split(","))
        elif key == "error":
            if value in _TRUE:
                error = True
            elif value in _FALSE:
                error = False
            else:
                raise ValueError(
                    f"failed to parse check option \"{part}\": strconv.ParseBool: parsing \"{value}\": invalid syntax"
                )
        else:
            raise ValueError(f"invalid check option \"{key}\"")
    return CheckConfig(skip, skip_all, error, experimental, experimental_all)


def directive_value(source: bytes | str) -> tuple[str, int] | None:
    """The value of the `# check=` parser directive and its line, None when there is none.

    Directives are the leading comment lines of the form `# name=value` with a known name; the
    first other line ends them (BuildKit's ParseDirective).
    """
    if isinstance(source, bytes):
        source = source.decode("utf-8", errors="replace")
    if source.startswith("\ufeff"):
        source = source[1:]
    for number, line in enumerate(source.splitlines(), 1):
        m = _DIRECTIVE.match(line.lstrip("\t\v\f\r "))
        if m is None or m.group(1).lower() not in _KNOWN:
            return None
        if m.group(1).lower() == "check":
            return m.group(2), number
    return None


def config_from_directive(source: bytes | str, file: str = "Dockerfile") -> CheckConfig:
    """The configuration the `# check=` directive of a Dockerfile asks for (defaults without one).

    An invalid directive raises DockerfileError at its line (BuildKit fails the build on it).
    """
    found = directive_value(source)
    if found is None:
        return CheckConfig()
    value, line = found
    try:
        return parse_options(value)
    except ValueError as e:
        raise DockerfileError(str(e), file, line, 1) from None


def merge(directive: CheckConfig, cli_skip: Iterable[str] = (), cli_error: bool | None = None) -> CheckConfig:
    """The directive's configuration with the command line's `--skip` (added; `all` skips every
    rule) and `--error` (None: the directive decides)."""
    names = {name.strip() for item in cli_skip for name in item.split(",") if name.strip()}
    return CheckConfig(
        skip=directive.skip | (names - {"all"}),
        skip_all=directive.skip_all or "all" in names,
        error=directive.error if cli_error is None else cli_error,
        experimental=directive.experimental,
        experimental_all=directive.experimental_all,
    )


def with_comments(config: CheckConfig, comments: tuple[str, ...]) -> CheckConfig:
    """The configuration for one instruction: a `# check=…` comment right before it adds its
    skips (`# check=skip=Rule // why` — the text after a space is ignored). BuildKit's
    WithMergedConfigFromComments: the first such comment counts; an invalid one is ignored."""
    for comment in comments:
        m = _DIRECTIVE.match("#" + comment)
        if m is None or m.group(1).lower() != "check":
            continue
        try:
            local = parse_options(m.group(2).split(" ", 1)[0])
        except ValueError:
            return config
        return CheckConfig(
            skip=config.skip | local.skip,
            skip_all=config.skip_all or local.skip_all,
            error=config.error,
            experimental=config.experimental | local.experimental,
            experimental_all=config.experimental_all or local.experimental_all,
        )
    return config
