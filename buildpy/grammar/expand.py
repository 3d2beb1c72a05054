"""Which words of which instruction are expanded, and how: BuildKit's per-command `Expand`.

The planner calls `expand_instruction` with the ARG and ENV a step sees. Expanded, as BuildKit
does: ENV and LABEL keys and values; COPY/ADD sources, destination, --chown, --chmod and ADD's
--checksum (never --from); the bodies of COPY/ADD heredocs whose delimiter was not quoted
(quotes kept, escape always `\\`); WORKDIR, USER, VOLUME, STOPSIGNAL; RUN's --mount values;
EXPOSE, whose words are split again after expansion. Not expanded: RUN/CMD/ENTRYPOINT/SHELL
commands (the shell does that), HEALTHCHECK, MAINTAINER, ONBUILD. ARG defaults and FROM
(with the global ARGs) are expanded by the planner where their scope is known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.flags import error_at, parse_mount
from buildpy.grammar.instructions import (
    Add,
    Env,
    Expose,
    FileCopy,
    InlineSource,
    Instruction,
    Label,
    Run,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from buildpy.grammar.shell import expand_word_tracked, expand_words

OnUnmatched = Callable[[Instruction, frozenset[str]], None]


def expand_instruction(
    instruction: Instruction,
    env: Mapping[str, str],
    escape: str = "\\",
    on_unmatched: OnUnmatched | None = None,
) -> Instruction:
    """The instruction with its expandable words expanded in `env`.

    `on_unmatched(instruction, names)` hears of variables that were referenced but not set
    (for the UndefinedVar check). Errors name the instruction's place.
    """
    unmatched: set[str] = set()

    def word(text: str) -> str:
        if "$" not in text and escape not in text and "'" not in text and '"' not in text:
            return text
        result = expand_word_tracked(text, env, escape)
        unmatched.update(result.unmatched)
        return result.result

    def raw(text: str) -> str:
        result = expand_word_tracked(text, env, "\\", skip_quotes=True)
        unmatched.update(result.unmatched)
        return result.result

    try:
        expanded = _expand(instruction, word, raw, env, escape)
    except DockerfileError as e:
        raise e.located(line=instruction.node.start_line, col=instruction.node.col) from None
    if unmatched and on_unmatched is not None:
        on_unmatched(instruction, frozenset(unmatched))
    return expanded


def _expand(
    instruction: Instruction,
    word: Callable[[str], str],
    raw: Callable[[str], str],
    env: Mapping[str, str],
    escape: str,
) -> Instruction:
    if isinstance(instruction, (Env, Label)):
        return replace(instruction, pairs=tuple((word(k), word(v)) for k, v in instruction.pairs))
    if isinstance(instruction, FileCopy):
        changes: dict[str, object] = {
            "sources": tuple(word(s) for s in instruction.sources),
            "dest": word(instruction.dest),
            "chown": word(instruction.chown),
            "chmod": word(instruction.chmod),
            "inline": tuple(
                InlineSource(s.name, raw(s.data), s.expand) if s.expand else s for s in instruction.inline
            ),
        }
        if isinstance(instruction, Add):
            changes["checksum"] = word(instruction.checksum)
        return replace(instruction, **changes)
    if isinstance(instruction, Workdir):
        return replace(instruction, path=word(instruction.path))
    if isinstance(instruction, User):
        return replace(instruction, user=word(instruction.user))
    if isinstance(instruction, StopSignal):
        return replace(instruction, signal=word(instruction.signal))
    if isinstance(instruction, Volume):
        return replace(instruction, paths=tuple(word(p) for p in instruction.paths))
    if isinstance(instruction, Expose):
        ports = tuple(p for port in instruction.ports for p in expand_words(port, env, escape))
        return replace(instruction, ports=ports)
    if isinstance(instruction, Run) and instruction.mount_specs:
        mounts = []
        for spec in instruction.mount_specs:
            try:
                mounts.append(parse_mount(spec, word))
            except ValueError as e:
                raise error_at(instruction.node, spec, str(e)) from None
        return replace(instruction, mounts=tuple(mounts))
    return instruction
