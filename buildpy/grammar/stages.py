"""Stages and the stage DAG of a Dockerfile.

A stage starts at each FROM. It depends on an earlier stage it is built FROM, on the stages
its `COPY --from=NAME|INDEX` and `RUN --mount=from=NAME` read, and on nothing else; any other
name there is an image. Resolution follows BuildKit: FROM sees only earlier stages; `--from`
names any stage, so a cycle is reported (where it closes) before a read of a later stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildpy.grammar.ast import Directive, ParseResult, Warning
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.flags import error_at_offset
from buildpy.grammar.instructions import Arg, Copy, From, Instruction, Run, instruction_from_node
from buildpy.grammar.suggest import did_you_mean


@dataclass(frozen=True, slots=True)
class Stage:
    index: int
    name: str | None  # lower-cased; None for an unnamed stage
    base: str  # the FROM word as written: an image, an earlier stage, or `scratch`
    platform: str
    start: From
    instructions: tuple[Instruction, ...]
    base_stage: int | None  # the earlier stage it is built FROM, when it is one
    depends_on: tuple[int, ...]  # every stage it needs (base, --from, mount from), sorted
    images: tuple[str, ...]  # images named by --from / mount from (FROM's image is `base`)

    @property
    def label(self) -> str:
        return self.name or str(self.index)


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """A parsed Dockerfile: global ARGs, stages, directives, parser warnings."""

    file: str
    meta_args: tuple[Arg, ...]
    stages: tuple[Stage, ...]
    directives: tuple[Directive, ...]
    escape: str
    warnings: tuple[Warning, ...]

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
        """The target and every stage it needs, in an order that builds each after its needs."""
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
        return tuple(self.stages[i] for i in order)


def stages_from(result: ParseResult) -> Dockerfile:
    """Typed instructions grouped into stages, with the DAG checked (no cycles, no bad refs)."""
    meta_args: list[Arg] = []
    groups: list[tuple[From, list[Instruction]]] = []
    try:
        for node in result.nodes:
            instruction = instruction_from_node(node)
            if isinstance(instruction, From):
                groups.append((instruction, []))
            elif groups:
                groups[-1][1].append(instruction)
            elif isinstance(instruction, Arg):
                meta_args.append(instruction)
            else:
                raise DockerfileError(
                    f"{node.keyword.upper()} before the first FROM: only ARG may come before FROM",
                    line=node.start_line,
                    col=node.col,
                )
        if not groups:
            raise DockerfileError("no build stage in the Dockerfile: it needs a FROM", line=1, col=1)
        stages, forward = _link(groups)
        _check_cycles(stages)
        if forward:
            raise forward[0]
    except DockerfileError as e:
        e.file = result.file
        raise
    return Dockerfile(
        result.file, tuple(meta_args), stages, result.directives, result.escape, result.warnings
    )


def _link(groups: list[tuple[From, list[Instruction]]]) -> tuple[tuple[Stage, ...], list[DockerfileError]]:
    """The stages with their edges, and an error for each read of a stage defined later.

    BuildKit builds stages in file order, so reading a later stage fails (after its check for
    cycles, which is why these errors are returned rather than raised).
    """
    by_name: dict[str, int] = {}
    forward: list[DockerfileError] = []
    for index, (start, _) in enumerate(groups):
        if start.name is not None:
            if start.name in by_name:
                first = groups[by_name[start.name]][0]
                raise error_at_offset(
                    start.node,
                    start.node.original.rfind(start.node.args[2]),  # the name, not an image alike
                    f"duplicate stage name \"{start.name}\", first defined on line {first.line}",
                )
            by_name[start.name] = index
    stages = []
    for index, (start, instructions) in enumerate(groups):
        # FROM sees only the stages before it (BuildKit registers them in order)
        earlier = by_name.get(start.image)
        base_stage = earlier if earlier is not None and earlier < index else None
        deps = set() if base_stage is None else {base_stage}
        images = []
        for instruction in instructions:
            for ref, allow_index in _stage_refs(instruction):
                resolved = _resolve(instruction, ref, allow_index, by_name, len(groups))
                if resolved is None:
                    images.append(ref)
                elif resolved == index:
                    label = start.name or str(index)
                    raise _error_at_ref(instruction, ref, f"stage \"{label}\" cannot read from itself")
                else:
                    deps.add(resolved)
                    if resolved > index:
                        forward.append(_forward_error(instruction, ref, groups[resolved][0], start, index))
        stages.append(
            Stage(
                index=index,
                name=start.name,
                base=start.image,
                platform=start.platform,
                start=start,
                instructions=tuple(instructions),
                base_stage=base_stage,
                depends_on=tuple(sorted(deps)),
                images=tuple(images),
            )
        )
    return tuple(stages), forward


def _forward_error(instruction: Instruction, ref: str, later: From, start: From, index: int) -> DockerfileError:
    current = start.name or str(index)
    if isinstance(instruction, Copy):
        message = f"cannot copy from stage \"{ref}\", it needs to be defined before current stage \"{current}\""
    else:
        message = f"cannot mount from stage \"{ref}\", stage needs to be defined before current command"
    return _error_at_ref(instruction, ref, f"{message} (it is defined on line {later.line})")


def _error_at_ref(instruction: Instruction, ref: str, message: str) -> DockerfileError:
    """An error at the value of the `--from=REF` / `from=REF` that names `ref`."""
    original = instruction.node.original
    m = re.search(rf"from={re.escape(ref)}(?=[\s,\"']|$)", original)
    offset = m.start() + len("from=") if m else original.find(ref)
    return error_at_offset(instruction.node, offset, message)


def _stage_refs(instruction: Instruction) -> list[tuple[str, bool]]:
    """(reference, whether a number is a stage index) for each stage or image it reads."""
    if isinstance(instruction, Copy) and instruction.from_:
        return [(instruction.from_, True)]
    if isinstance(instruction, Run):
        return [(m.from_, False) for m in instruction.mounts if m.from_]
    return []


def _resolve(
    instruction: Instruction, ref: str, allow_index: bool, by_name: dict[str, int], count: int
) -> int | None:
    """The stage `ref` names, or None when it names an image; an error when it is neither."""
    if "$" in ref:
        raise _error_at_ref(
            instruction,
            ref,
            "variable expansion is not supported for --from, define a new stage with FROM using "
            "ARG from global scope as a workaround",
        )
    index = _index_of(ref) if allow_index else None
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
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?",
    re.ASCII,
)


def is_image_reference(text: str) -> bool:
    """Whether `text` is a well-formed image reference (`busybox`, `host:5000/a/b:tag@sha256:…`)."""
    return len(text) <= 255 and _REFERENCE.fullmatch(text) is not None


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
        for ref, allow_index in _stage_refs(instruction):
            # the same reading as _resolve: an index only for COPY --from, a name in any case
            if (allow_index and _index_of(ref) == dep.index) or (
                dep.name is not None and ref.lower() == dep.name
            ):
                return _error_at_ref(instruction, ref, message)
    return DockerfileError(message, line=stage.start.line, col=stage.start.node.col)


def describe_stages(dockerfile: Dockerfile, target: str | None = None) -> str:
    """A plain listing of the stages, what each needs, and the build order of the target."""
    lines = []
    if dockerfile.meta_args:
        names = ", ".join(a.name for arg in dockerfile.meta_args for a in arg.args)
        lines.append(f"global args: {names}")
    for stage in dockerfile.stages:
        base = f"stage {stage.base_stage}" if stage.base_stage is not None else stage.base
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
