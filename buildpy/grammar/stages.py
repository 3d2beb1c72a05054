"""Stages and the stage DAG of a Dockerfile.

A stage starts at each FROM. It depends on an earlier stage it is built FROM, on the stages
its `COPY --from=NAME|INDEX` and `RUN --mount=from=NAME` read, and on nothing else; any other
name there is an image. Resolution follows BuildKit: FROM sees only earlier stages (by the
word as written, once expanded); `--from` names any stage, so a cycle is reported before a
read of a later stage, and that read fails only when a stage being built makes it.

A FROM word holding variables (`FROM $BASE`) is resolved once the planner knows the global
ARGs: `Dockerfile.with_bases_expanded`. `--from` words are never expanded (BuildKit refuses
variables there, with a workaround in its message).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from buildpy.grammar.ast import Directive, ParseResult, Warning
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.flags import error_at_offset, flags_end
from buildpy.grammar.instructions import Arg, Copy, From, Instruction, Run, instruction_from_node
from buildpy.grammar.suggest import did_you_mean


@dataclass(frozen=True, slots=True)
class Stage:
    index: int
    name: str | None  # lower-cased; None for an unnamed stage
    base: str  # the FROM word as written: an image, an earlier stage, or `scratch`
    expanded_base: str | None  # `base` with its variables substituted; None until they are known
    platform: str  # as written (variables unexpanded)
    start: From
    instructions: tuple[Instruction, ...]
    base_stage: int | None  # the earlier stage it is built FROM, when it is one
    depends_on: tuple[int, ...]  # every stage it needs (base, --from, mount from), sorted
    images: tuple[str, ...]  # images named by --from / mount from (FROM's image is `base`)

    @property
    def label(self) -> str:
        """The name BuildKit gives it in messages and progress: its name, else `stage-N`."""
        return self.name or f"stage-{self.index}"

    @property
    def needs_expansion(self) -> bool:
        """Whether its FROM word holds variables: its base stage is unknown until expanded."""
        return self.expanded_base is None

    @property
    def line(self) -> int:
        return self.start.line

    @property
    def end_line(self) -> int:
        """The last line of its last instruction (heredoc bodies included)."""
        last = self.instructions[-1] if self.instructions else self.start
        return last.node.end_line


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """A parsed Dockerfile: global ARGs, stages, directives, parser warnings."""

    file: str
    meta_args: tuple[Arg, ...]
    stages: tuple[Stage, ...]
    directives: tuple[Directive, ...]
    escape: str
    warnings: tuple[Warning, ...]
    # Reads of a stage defined later, by stage index: an error only if that stage is built.
    later_reads: tuple[tuple[int, DockerfileError], ...] = field(default=(), compare=False, repr=False)

    def stage(self, target: str | None = None) -> Stage:
        """The stage `--target` names (the last one when None)."""
        if target is None or target == "":
            return self.stages[-1]
        for stage in self.stages:
            if stage.name == target.lower():
                return stage
        names = [s.name for s in self.stages if s.name]
        raise DockerfileError(
            f"target stage \"{target}\" could not be found{did_you_mean(target, names)}", self.file
        )

    def stages_needed(self, target: str | None = None) -> tuple[Stage, ...]:
        """The target and every stage it needs, in an order that builds each after its needs.

        FROM words not yet expanded add no edge: call `with_bases_expanded` first when any
        stage `needs_expansion`.
        """
        order: list[int] = []
        seen: set[int] = set()

        def visit(index: int) -> None:
            if index in seen:
                return
            seen.add(index)
            for dep in self.stages[index].depends_on:
                visit(dep)
            order.append(index)

        visit(self.stage(target).index)
        # BuildKit builds the needed stages in file order: the first to read a later one fails
        for index, error in sorted(self.later_reads, key=lambda pair: pair[0]):
            if index in seen:
                raise error.located(file=self.file)
        return tuple(self.stages[i] for i in order)

    def with_bases_expanded(self, expand: Callable[[str], str]) -> Dockerfile:
        """The stages again, each FROM word that holds variables expanded by `expand`.

        `expand` substitutes the global ARGs (and build args) in a word; the DAG is linked and
        checked again, since an expanded word may name an earlier stage.
        """
        groups = [(stage.start, list(stage.instructions)) for stage in self.stages]
        bases: list[str | None] = []
        try:
            for stage in self.stages:
                bases.append(stage.expanded_base if not stage.needs_expansion else _expand_base(stage.start, expand))
            stages, later_reads = _link(groups, bases)
        except DockerfileError as e:
            e.file = self.file
            raise
        return Dockerfile(
            self.file, self.meta_args, stages, self.directives, self.escape, self.warnings, later_reads
        )


def group_stages(instructions: Iterable[Instruction]
                 ) -> tuple[list[Arg], list[tuple[From, list[Instruction]]], Instruction | None]:
    """(the ARGs before the first FROM, each FROM with what follows it, the first instruction
    other than ARG before any FROM — where grouping stopped — or None)."""
    meta_args: list[Arg] = []
    groups: list[tuple[From, list[Instruction]]] = []
    for instruction in instructions:
        if isinstance(instruction, From):
            groups.append((instruction, []))
        elif groups:
            groups[-1][1].append(instruction)
        elif isinstance(instruction, Arg):
            meta_args.append(instruction)
        else:
            return meta_args, groups, instruction
    return meta_args, groups, None


def stages_from(result: ParseResult) -> Dockerfile:
    """Typed instructions grouped into stages, with the DAG checked (no cycles, no bad refs)."""
    try:
        meta_args, groups, stray = group_stages(instruction_from_node(node, result.file) for node in result.nodes)
        if stray is not None:
            node = stray.node
            raise DockerfileError(
                f"{node.keyword.upper()} before the first FROM: only ARG may come before FROM",
                line=node.start_line,
                col=node.col,
            )
        if not groups:
            raise DockerfileError("no build stage in the Dockerfile: it needs a FROM", line=1, col=1)
        bases = [start.image if _is_literal(start.image) else None for start, _ in groups]
        stages, later_reads = _link(groups, bases)
    except DockerfileError as e:
        e.file = result.file
        raise
    return Dockerfile(
        result.file, tuple(meta_args), stages, result.directives, result.escape, result.warnings, later_reads
    )


def _is_literal(word: str) -> bool:
    """Whether expansion leaves `word` as it is: no variable, quote or escape character."""
    return not any(ch in word for ch in "$\\`'\"")


def _expand_base(start: From, expand: Callable[[str], str]) -> str:
    try:
        expanded = expand(start.image)
    except DockerfileError as e:
        raise e.located(line=start.line, col=start.node.col) from None
    if not expanded:
        raise DockerfileError(
            f"base name ({start.image}) should not be blank", line=start.line, col=start.node.col
        )
    return expanded


@dataclass(frozen=True, slots=True)
class _Read:
    """A stage or image an instruction reads: `COPY --from=ref` or `RUN --mount=from=ref`."""

    ref: str
    by_index: bool  # a number names a stage by index (COPY --from only)
    mount_target: str | None  # the mount's target; None for COPY


def _link(
    groups: list[tuple[From, list[Instruction]]], bases: list[str | None]
) -> tuple[tuple[Stage, ...], tuple[tuple[int, DockerfileError], ...]]:
    """The stages with their edges, checked; and an error for each read of a stage defined later.

    `bases[i]` is stage i's FROM word expanded, None while it holds unexpanded variables.
    """
    by_name = _names(groups)
    later_reads: list[tuple[int, DockerfileError]] = []
    stages = []
    for index, (start, instructions) in enumerate(groups):
        base_stage = _base_stage(start, bases[index], index, by_name)
        deps = set() if base_stage is None else {base_stage}
        images = []
        label = start.name or f"stage-{index}"
        for instruction in instructions:
            for read in _reads(instruction):
                resolved = _resolve(instruction, read, by_name, len(groups))
                if resolved is None:
                    images.append(read.ref)
                elif resolved == index:
                    raise _error_at_ref(instruction, read.ref, f"stage \"{label}\" cannot read from itself")
                else:
                    deps.add(resolved)
                    if resolved > index:
                        error = _later_read_error(instruction, read, groups[resolved][0], label)
                        later_reads.append((index, error))
        stages.append(
            Stage(
                index=index,
                name=start.name,
                base=start.image,
                expanded_base=bases[index],
                platform=start.platform,
                start=start,
                instructions=tuple(instructions),
                base_stage=base_stage,
                depends_on=tuple(sorted(deps)),
                images=tuple(images),
            )
        )
    _check_cycles(tuple(stages))
    return tuple(stages), tuple(later_reads)


def _names(groups: list[tuple[From, list[Instruction]]]) -> dict[str, int]:
    """Stage index by name; a name given twice is an error at the second, naming the first."""
    by_name: dict[str, int] = {}
    for index, (start, _) in enumerate(groups):
        if start.name is None:
            continue
        if start.name in by_name:
            first = groups[by_name[start.name]][0]
            raise error_at_offset(
                start.node,
                start.node.original.rfind(start.node.args[2]),  # the name, not an image alike
                f"duplicate stage name \"{start.name}\", first defined on line {first.line}",
            )
        by_name[start.name] = index
    return by_name


def _base_stage(start: From, base: str | None, index: int, by_name: dict[str, int]) -> int | None:
    """The earlier stage FROM names; None for an image (or a word not yet expanded).

    BuildKit looks the word up as it stands (not lower-cased) among the stages before it.
    """
    if base is None:
        return None
    earlier = by_name.get(base)
    if earlier is not None and earlier < index:
        return earlier
    if not is_image_reference(base):
        names = [name for name, i in by_name.items() if i < index]
        # stage names are lower case; a word that differs only in case is surely one of them
        hint = f" (did you mean {base.lower()}?)" if base.lower() in names else did_you_mean(base, names)
        offset = start.node.original.find(start.image, flags_end(start.node))
        what = f"FROM {base}" if base == start.image else f"FROM {start.image} (expanded: {base})"
        raise error_at_offset(
            start.node, offset, f"{what} names no earlier stage and is not a valid image reference{hint}"
        )
    return None


def _later_read_error(instruction: Instruction, read: _Read, later: From, current: str) -> DockerfileError:
    if read.mount_target is None:
        message = f"cannot copy from stage \"{read.ref}\", it needs to be defined before current stage \"{current}\""
    else:
        message = (
            f"cannot mount from stage \"{read.ref}\" to \"{read.mount_target}\", "
            "stage needs to be defined before current command"
        )
    return _error_at_ref(instruction, read.ref, f"{message} (it is defined on line {later.line})")


def _error_at_ref(instruction: Instruction, ref: str, message: str) -> DockerfileError:
    """An error at the value of the `--from=REF` / `from=REF` that names `ref`."""
    original = instruction.node.original
    m = re.search(rf"from={re.escape(ref)}(?=[\s,\"']|$)", original)
    offset = m.start() + len("from=") if m else original.find(ref)
    return error_at_offset(instruction.node, offset, message)


def _reads(instruction: Instruction) -> list[_Read]:
    if isinstance(instruction, Copy) and instruction.from_:
        return [_Read(instruction.from_, True, None)]
    if isinstance(instruction, Run):
        return [_Read(m.from_, False, m.target) for m in instruction.mounts if m.from_]
    return []


def _resolve(instruction: Instruction, read: _Read, by_name: dict[str, int], count: int) -> int | None:
    """The stage `read` names, or None when it names an image; an error when it is neither."""
    ref = read.ref
    if "$" in ref[:-1]:  # a `$` at the very end is no variable
        raise _error_at_ref(
            instruction,
            ref,
            "variable expansion is not supported for --from, define a new stage with FROM using "
            "ARG from global scope as a workaround",
        )
    index = _index_of(ref) if read.by_index else None
    if index is not None:
        if index >= count:
            raise _error_at_ref(instruction, ref, f"invalid stage index {index}: stages are numbered 0 to {count - 1}")
        return index
    found = by_name.get(ref.lower())
    if found is not None:
        return found
    if not is_image_reference(ref):
        hint = did_you_mean(ref, by_name) or (f" (stages: {', '.join(by_name)})" if by_name else "")
        raise _error_at_ref(
            instruction, ref, f"--from={ref} names no stage and is not a valid image reference{hint}"
        )
    return None


def _index_of(ref: str) -> int | None:
    """The stage index `ref` writes, as Go's strconv.Atoi reads it (ASCII digits, int64), else None.

    Anything else is a name (or an image): `²`, or digits beyond int64, as BuildKit has it.
    """
    if not (ref.isascii() and ref.isdigit()):
        return None
    digits = ref.lstrip("0") or "0"
    if len(digits) > 19:  # past int64 (and before int() grows slow on long text)
        return None
    value = int(digits)
    return value if value < 1 << 63 else None


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
# re.ASCII: Go's `\w` is [0-9A-Za-z_]; fullmatch: `$` would also match before a final newline
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?",
    re.ASCII,
)
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")


def is_image_reference(text: str) -> bool:
    """Whether `text` is a well-formed image reference (`busybox`, `host:5000/a/b:tag@sha256:…`).

    As distribution's ParseNormalizedNamed: the name at most 255 characters, and not a
    64-hex image ID (that would read as a repository named like a digest).
    """
    if len(text) > 1024 or _IMAGE_ID.fullmatch(text):  # past any valid one: don't regex it
        return False
    m = _REFERENCE.fullmatch(text)
    return m is not None and len(m.group("name")) <= 255


def _check_cycles(stages: tuple[Stage, ...]) -> None:
    state: dict[int, int] = {}  # 1 on the current path, 2 done

    def visit(index: int, path: list[int]) -> None:
        state[index] = 1
        for dep in stages[index].depends_on:
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep):], index, dep] if dep in path else [index, dep]
                names = " -> ".join(stages[i].label for i in cycle)
                raise _error_where_read(
                    stages[index], stages[dep], f"circular dependency detected on stage: {stages[dep].label} ({names})"
                )
            if state.get(dep) is None:
                visit(dep, [*path, index])
        state[index] = 2

    for stage in stages:
        if stage.index not in state:
            visit(stage.index, [])


def _error_where_read(stage: Stage, dep: Stage, message: str) -> DockerfileError:
    """An error at the instruction of `stage` that reads `dep` (its FROM if nothing else does)."""
    for instruction in stage.instructions:
        for read in _reads(instruction):
            # the same reading as _resolve: an index only for COPY --from, a name in any case
            if (read.by_index and _index_of(read.ref) == dep.index) or (
                dep.name is not None and read.ref.lower() == dep.name
            ):
                return _error_at_ref(instruction, read.ref, message)
    return DockerfileError(message, line=stage.start.line, col=stage.start.node.col)


def describe_stages(dockerfile: Dockerfile, target: str | None = None) -> str:
    """A plain listing of the stages, what each needs, and the build order of the target."""
    lines = []
    if dockerfile.meta_args:
        names = ", ".join(a.name for arg in dockerfile.meta_args for a in arg.args)
        lines.append(f"global args: {names}")
    for stage in dockerfile.stages:
        base = f"stage {stage.base_stage}" if stage.base_stage is not None else stage.base
        if stage.needs_expansion:
            base += " (unexpanded)"
        needs = ", ".join(dockerfile.stages[i].label for i in stage.depends_on) or "-"
        images = f"; images {', '.join(stage.images)}" if stage.images else ""
        lines.append(
            f"stage {stage.index} {stage.name or '(unnamed)'}: FROM {base}"
            f"{' --platform=' + stage.platform if stage.platform else ''}"
            f" (line {stage.start.line}, {_count(len(stage.instructions), 'instruction')}); needs {needs}{images}"
        )
    order = " -> ".join(s.label for s in dockerfile.stages_needed(target))
    lines.append(f"build order for {dockerfile.stage(target).label}: {order}")
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
