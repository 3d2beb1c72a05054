"""What a lint run produces: `Finding` (one rule firing at one place) and `LintResult`."""

from __future__ import annotations

from dataclasses import dataclass

from buildpy.checks.config import CheckConfig
from buildpy.grammar.errors import DockerfileError


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str  # "StageNameCasing"
    message: str  # BuildKit's detail text for this place
    file: str
    line: int  # 1-based first line of the instruction (or of the empty continuation)
    end_line: int  # its last line
    col: int = 0  # column of the instruction's keyword; 0 when the place is a whole line
    description: str = ""  # the rule's one-line description
    url: str = ""  # https://docs.docker.com/go/dockerfile/rule/<kebab-name>/ ("" when BuildKit has none)


@dataclass(frozen=True, slots=True)
class LintResult:
    findings: tuple[Finding, ...]  # sorted by line
    config: CheckConfig  # the configuration the run used (the directive's, or the one passed in)
    error: DockerfileError | None = None  # the Dockerfile's first error, reported, not raised

    @property
    def failed(self) -> bool:
        """Whether the build should stop: an error, or findings under `error=true`."""
        return self.error is not None or (self.config.error and bool(self.findings))
