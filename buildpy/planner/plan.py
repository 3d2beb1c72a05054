"""The build plan: a Dockerfile and its context turned into stages of steps, each step with the
state it runs in (env, workdir, user), its instruction expanded, its history entry as BuildKit
writes it, and its cache key.

The planner is BuildKit's dispatcher without the solver: it walks the stages the target needs,
keeps ARG/ENV scope per stage, folds metadata instructions (ENV, LABEL, CMD, …) into the image
config, and gives every filesystem step (RUN, COPY, ADD, WORKDIR) a key: blake3 over its parent
step's key, what the step does after expansion, the env and args it sees, and the digest of the
files it reads. Metadata steps have no key of their own; what they change reaches the keys of
the steps that see it (an ENV a RUN sees changes that RUN's key; a LABEL changes none).
"""

from __future__ import annotations

import copy
import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import blake3

from buildpy.cas.image import Image, host_platform, new_config
from buildpy.cas.store import Store
from buildpy.grammar.ast import go_quote
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.expand import expand_instruction
from buildpy.grammar.flags import parse_chmod
from buildpy.grammar.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    FileCopy,
    Healthcheck,
    Instruction,
    Label,
    Maintainer,
    OnBuild,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
    instruction_from_node,
)
from buildpy.grammar.parser import parse
from buildpy.grammar.shell import expand_word
from buildpy.grammar.stages import Dockerfile, Stage, stages_from
from buildpy.planner import args as argslib
from buildpy.planner.context import ContextError, ContextReader, Selection
from buildpy.planner.request import BuildRequest

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")
KEY_VERSION = "buildpy-key-1"


class PlanError(Exception):
    """The build cannot be planned: a missing base image, a bad flag value. One line."""

    user_facing = True


@dataclass(frozen=True)
class Base:
    """Where a stage starts: scratch, an image in the store, another stage, or a directory build
    context (its files the stage's first layer, as BuildKit makes a local context a rootfs)."""

    kind: str  # "scratch" | "image" | "stage" | "context"
    name: str
    key: str
    image: Image | None = None
    stage: int | None = None
    source: Path | None = None  # kind "context": the directory
    selection: Selection | None = field(default=None, compare=False)  # kind "context": its files


@dataclass(frozen=True)
class RunMountPlan:
    """A RUN --mount after expansion: its absolute target, and where `from` points."""

    type: str
    target: str
    source: str
    options: Any  # the grammar's flags.Mount, expanded
    from_stage: int | None = None
    from_image: Image | None = None
    selection: Selection | None = None  # a bind mount of the context: the files it reads
    from_dir: Path | None = None  # from= a directory build context


@dataclass(frozen=True)
class Step:
    """One instruction of a stage, planned. `op`: "run", "copy", "workdir" (they change the
    filesystem, and have a `key`), or "meta"."""

    number: int  # 1-based over the whole plan, for progress lines (#N)
    stage: int
    label: str  # "[build 2/5] RUN make"
    op: str
    instruction: Instruction  # expanded
    history: str  # created_by
    key: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[str, ...] = ()  # what a RUN's process sees
    workdir: str = "/"
    user: str = ""
    argv: tuple[str, ...] = ()
    inline_files: tuple[tuple[str, bytes], ...] = ()  # RUN heredoc with #!: run from /dev/pipes
    mounts: tuple[RunMountPlan, ...] = ()
    selection: Selection | None = None  # COPY/ADD from the context
    from_stage: int | None = None
    from_image: Image | None = None
    source_root: Path | None = None  # where `selection` was read, when not the context (ADD URL)
    files: Mapping[str, str] = field(default_factory=dict, compare=False)  # for explaining misses

    @property
    def where(self) -> str:
        return f"{self.instruction.file}:{self.instruction.line}"


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str  # as progress shows it: the stage's name or `stage-N`
    base: Base
    steps: tuple[Step, ...]
    config: Mapping[str, Any]  # the image config the stage ends with (no rootfs, no history)
    key: str  # the key of its last filesystem state
    args: Mapping[str, str] = field(default_factory=dict)  # ARGs in scope at its end, and their order:
    arg_order: tuple[str, ...] = ()  # a stage FROM this one inherits them, as BuildKit's dispatch state


@dataclass(frozen=True)
class Plan:
    dockerfile: Dockerfile
    stages: Mapping[int, StagePlan]  # the stages the target needs, by index
    order: tuple[int, ...]  # an order that builds each stage after what it needs
    target: int
    platform: str
    source_date_epoch: int | None
    context_reader: ContextReader
    temp_dirs: list[Path] = field(default_factory=list, compare=False)  # downloads, removed after the build
    bases: Mapping[str, str] = field(default_factory=dict)  # ref → manifest digest of the images it uses
    unused_args: tuple[str, ...] = ()  # --build-arg names no ARG declared (BuildKit warns of them)

    def steps(self) -> list[Step]:
        return [step for i in self.order for step in self.stages[i].steps]


def key_of(inputs: Mapping[str, Any]) -> str:
    """A cache key: blake3 over the canonical JSON of what a step depends on."""
    data = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return blake3.blake3(f"{KEY_VERSION}\0{data}".encode("utf-8", "surrogateescape")).hexdigest()


def read_dockerfile(path: Path, name: str) -> Dockerfile:
    try:
        source = path.read_bytes()
    except OSError as e:
        raise PlanError(f"cannot read the Dockerfile {path}: {e.strerror}") from None
    return stages_from(parse(source, name))


ImageFetcher = Callable[[str, str], tuple[str, Image]]  # (reference, platform) → (ref name, image)


def make_plan(store: Store, request: BuildRequest, context_reader: ContextReader,
              fetch_image: ImageFetcher | None = None) -> Plan:
    """Plan the build of `request`'s target: every needed stage, every step, every key.
    `fetch_image` is asked for an image the store lacks (the executor's registry pull)."""
    name = request.dockerfile.name if request.dockerfile.parent == request.context else str(request.dockerfile)
    dockerfile = read_dockerfile(request.dockerfile, name)
    platform = request.platform or host_platform()
    epoch = argslib.source_date_epoch(request.build_args)
    return _Planner(store, request, dockerfile, platform, epoch, context_reader, fetch_image).plan()


class _Planner:
    def __init__(self, store: Store, request: BuildRequest, dockerfile: Dockerfile, platform: str,
                 epoch: int | None, reader: ContextReader, fetch_image: ImageFetcher | None = None) -> None:
        self.store = store
        self.fetch_image = fetch_image
        self.request = request
        self.dockerfile = dockerfile
        self.platform = platform
        self.epoch = epoch
        self.reader = reader
        self.escape = dockerfile.escape
        self.build_args = dict(request.build_args)
        self.platform_args = argslib.platform_args(platform, host_platform())
        self.global_args: dict[str, str | None] = {}
        self.stages: dict[int, StagePlan] = {}
        self.images: dict[tuple[str, str], Image] = {}
        self.number = 0
        self.temp_dirs: list[Path] = []
        self.bases: dict[str, str] = {}  # ref → manifest digest of every image it resolved
        self.used_args: set[str] = set(argslib.PROXY_ARGS) | {"SOURCE_DATE_EPOCH"}

    # --- the global scope ------------------------------------------------------------------

    def _global_scope(self) -> None:
        scope: dict[str, str] = dict(self.platform_args)
        for arg in self.dockerfile.meta_args:
            for definition in arg.args:
                value: str | None
                if definition.name in self.build_args:
                    value = self.build_args[definition.name]
                    self.used_args.add(definition.name)
                elif definition.default is not None:
                    value = self._expand_word(arg, definition.default, scope)
                else:
                    value = None
                self.global_args[definition.name] = value
                if value is not None:
                    scope[definition.name] = value
        self.global_scope = scope

    def _expand_word(self, where: Instruction, word: str, env: Mapping[str, str]) -> str:
        try:
            return expand_word(word, env, self.escape)
        except DockerfileError as e:
            raise e.located(file=where.file, line=where.line, col=where.col) from None

    # --- stages ----------------------------------------------------------------------------

    def plan(self) -> Plan:
        self._global_scope()
        df = self.dockerfile
        if any(stage.needs_expansion for stage in df.stages):
            df = df.with_bases_expanded(lambda word: expand_word(word, self.global_scope, self.escape))
            self.dockerfile = df
        needed = df.stages_needed(self.request.target)
        for stage in needed:
            self.stages[stage.index] = self._stage(stage)
        target = df.stage(self.request.target).index
        if self.request.labels:  # --label: on the image built, as BuildKit sets them
            final = self.stages[target]
            config = copy.deepcopy(dict(final.config))
            config["config"]["Labels"] = {**(config["config"].get("Labels") or {}), **self.request.labels}
            self.stages[target] = replace(final, config=config)
        return Plan(df, self.stages, tuple(s.index for s in needed), target, self.platform, self.epoch,
                    self.reader, self.temp_dirs, self.bases,
                    tuple(sorted(set(self.build_args) - self.used_args)))

    def _base(self, stage: Stage) -> Base:
        if stage.base_stage is not None:
            base_plan = self.stages[stage.base_stage]
            return Base("stage", base_plan.name, base_plan.key, stage=stage.base_stage)
        word = stage.expanded_base if stage.expanded_base is not None else stage.base
        named = self.request.named_contexts.get(word)
        if named is not None:
            if named[0] == "dir":
                from buildpy.planner.context import ContextError, ContextReader, selection_digest
                from buildpy.planner.dockerignore import Matcher, read_patterns

                root = Path(named[1])
                try:
                    reader = ContextReader(root, ignore=Matcher(read_patterns(root, root / "Dockerfile")))
                    selection = reader.select(["."], what="FROM")
                except ContextError as e:
                    raise DockerfileError(str(e), stage.start.file, stage.start.line, stage.start.col) from None
                key = key_of({"op": "context-dir", "files": selection_digest(selection), "epoch": self.epoch,
                              "platform": self._stage_platform(stage)})
                return Base("context", word, key, source=root, selection=selection)
            word = named[1]
        if word.lower() == "scratch" and word == "scratch":
            return Base("scratch", "scratch", key_of({"op": "scratch", "platform": self._stage_platform(stage)}))
        image = self._image(word, stage.start, self._stage_platform(stage))
        return Base("image", word, key_of({"op": "image", "manifest": image.digest}), image=image)

    def _stage_platform(self, stage: Stage) -> str:
        if not stage.platform:
            return self.platform
        return self._expand_word(stage.start, stage.platform, self.global_scope) or self.platform

    def _image(self, word: str, where: Instruction, platform: str | None = None) -> Image:
        platform = platform or self.platform
        if (word, platform) in self.images:
            return self.images[(word, platform)]
        from buildpy.cas.image import load_image
        from buildpy.cas.reference import InvalidReference, lookup, parse
        from buildpy.cas.store import StoreError

        try:
            if self.request.pull and self.fetch_image is not None:
                parse(word)  # a reference, not an image ID: only those can be asked of a registry
                raise StoreError("--pull: ask the registry")
            name, descriptor = lookup(self.store, word)
            image = load_image(self.store, descriptor, platform)
        except InvalidReference as e:
            raise DockerfileError(f"invalid reference {word!r}: {e}", where.file, where.line, where.col) from None
        except StoreError:
            if self.fetch_image is None:
                raise PlanError(
                    f"{where.file}:{where.line}: image {word!r} is not in the store; "
                    f"add it with `buildpy load FILE` (or `buildpy pull {word}`)"
                ) from None
            try:
                name, image = self.fetch_image(word, platform)
            except Exception as e:
                if getattr(e, "user_facing", False):
                    raise PlanError(f"{where.file}:{where.line}: image {word!r} is not in the store and cannot be "
                                    f"pulled ({e}); add it with `buildpy load FILE`") from None
                raise
            descriptor = image.manifest_descriptor
        self.images[(word, platform)] = image
        if name is not None:  # by digest alone it cannot change
            self.bases[name] = descriptor.digest
        return image

    def _stage(self, stage: Stage) -> StagePlan:
        base = self._base(stage)
        state = _StageState.start(self, stage, base)
        instructions: list[Instruction] = []
        # ONBUILD triggers: an image's, or (as BuildKit) those a base stage declared
        if base.image is not None:
            instructions.extend(self._triggers(stage, base.image.config.get("config", {}).get("OnBuild")))
        elif base.stage is not None:
            instructions.extend(self._triggers(stage, self.stages[base.stage].config["config"].get("OnBuild")))
        instructions.extend(stage.instructions)
        total = len(instructions) + 1
        steps: list[Step] = []
        for position, instruction in enumerate(instructions, start=2):
            label = f"[{state.name} {position}/{total}] {instruction.text}"
            step = state.dispatch(instruction, label)
            if step is not None:
                steps.append(step)
        return StagePlan(stage.index, state.name, base, tuple(steps), state.image_config(), state.key,
                         dict(state.args), tuple(state.arg_order))

    def _triggers(self, stage: Stage, expressions: list[str] | None) -> list[Instruction]:
        out: list[Instruction] = []
        for expression in expressions or ():
            try:
                result = parse(str(expression), f"{stage.start.file} (ONBUILD of {stage.base})")
                for node in result.nodes:
                    trigger = instruction_from_node(node, stage.start.file)
                    # the trigger runs where the FROM is, as BuildKit reports it
                    out.append(replace(trigger, node=replace(trigger.node, start_line=stage.start.line,
                                                             end_line=stage.start.line)))
            except DockerfileError as e:
                raise DockerfileError(f"ONBUILD trigger {expression!r} of {stage.base}: {e.message}",
                                      stage.start.file, stage.start.line, 0) from None
        return out

    def next_number(self) -> int:
        self.number += 1
        return self.number


class _StageState:
    """The scope and config of one stage while its instructions are dispatched."""

    def __init__(self, planner: _Planner, stage: Stage, base: Base, config: dict[str, Any],
                 args: dict[str, str], arg_order: list[str]) -> None:
        self.p = planner
        self.stage = stage
        self.name = stage.name or f"stage-{stage.index}"
        self.base = base
        self.config = config  # the whole image config (os, architecture, config, author …)
        self.args = args  # ARGs in scope with a value
        self.arg_order = arg_order  # ARGs declared in this stage (and its base stage), in order
        self.key = base.key
        self.cmd_set = False

    @classmethod
    def start(cls, planner: _Planner, stage: Stage, base: Base) -> _StageState:
        if base.kind == "stage":
            assert base.stage is not None
            parent = planner.stages[base.stage]
            config = copy.deepcopy(dict(parent.config))
            config.setdefault("config", {}).pop("OnBuild", None)
            state = cls(planner, stage, base, config, {}, [])
            state.args, state.arg_order = dict(parent.args), list(parent.arg_order)
            return state
        if base.image is not None:
            src = base.image.config
            config = {k: copy.deepcopy(v) for k, v in src.items() if k not in ("rootfs", "history", "created")}
            config.setdefault("config", {})
            config["config"].pop("OnBuild", None)
        else:
            config = new_config(planner._stage_platform(stage))
            for k in ("rootfs", "history"):
                config.pop(k, None)
        cfg = config["config"]
        env = list(cfg.get("Env") or [])
        if not any(e.split("=", 1)[0] == "PATH" for e in env):
            env.append("PATH=" + DEFAULT_PATH)
        cfg["Env"] = env
        return cls(planner, stage, base, config, {}, [])

    # --- scope -----------------------------------------------------------------------------

    @property
    def cfg(self) -> dict[str, Any]:
        return self.config["config"]

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.cfg.get("Env") or ():
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def scope(self) -> dict[str, str]:
        """What expansion sees: the stage's ARGs, overridden by ENV (ENV always wins)."""
        return {**self.args, **self.env_dict()}

    def run_env(self) -> tuple[str, ...]:
        env = list(self.cfg.get("Env") or ())
        names = {e.split("=", 1)[0] for e in env}
        for name in self.arg_order:
            if name in self.args and name not in names:
                env.append(f"{name}={self.args[name]}")
                names.add(name)
        for name in sorted(argslib.PROXY_ARGS):
            if name in self.p.build_args and name not in names:
                env.append(f"{name}={self.p.build_args[name]}")
        return tuple(env)

    @property
    def workdir(self) -> str:
        return self.cfg.get("WorkingDir") or "/"

    @property
    def user(self) -> str:
        return self.cfg.get("User") or ""

    @property
    def shell(self) -> tuple[str, ...]:
        return tuple(self.cfg.get("Shell") or DEFAULT_SHELL)

    def image_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)

    # --- dispatch --------------------------------------------------------------------------

    def dispatch(self, raw: Instruction, label: str) -> Step | None:
        if isinstance(raw, Arg):
            return self._arg(raw, label)
        if isinstance(raw, OnBuild):
            self.cfg.setdefault("OnBuild", [])
            self.cfg["OnBuild"] = list(self.cfg["OnBuild"] or []) + [raw.expression]
            return None
        ins = expand_instruction(raw, self.scope(), self.p.escape)
        if isinstance(ins, Run):
            return self._run(ins, label)
        if isinstance(ins, FileCopy):
            return self._copy(ins, label)
        if isinstance(ins, Workdir):
            return self._workdir(ins, label)
        return self._meta(ins, label)

    def _step(self, op: str, ins: Instruction, label: str, history: str, **kw: Any) -> Step:
        return Step(self.p.next_number(), self.stage.index, label, op, ins, history,
                    workdir=self.workdir, user=self.user, **kw)

    def _arg(self, ins: Arg, label: str) -> Step:
        parts = []
        for d in ins.args:
            value: str | None
            if d.name in self.p.build_args:
                value = self.p.build_args[d.name]
                self.p.used_args.add(d.name)
            elif d.default is not None:
                value = self.p._expand_word(ins, d.default, self.scope())
            elif d.name in self.p.global_args:
                value = self.p.global_args[d.name]
            elif d.name in self.p.platform_args:
                value = self.p.platform_args[d.name]
            else:
                value = None
            if value is not None:
                self.args[d.name] = value
            if d.name not in self.arg_order:
                self.arg_order.append(d.name)
            parts.append(d.name if value is None else f"{d.name}={value}")
        return self._step("meta", ins, label, "ARG " + " ".join(parts))

    def _meta(self, ins: Instruction, label: str) -> Step:
        if isinstance(ins, Maintainer):
            self.config["author"] = ins.maintainer
            history = f"MAINTAINER {ins.maintainer}"
        else:
            history, self.cmd_set = apply_metadata(self.cfg, ins, tuple(self.shell), self.cmd_set)
        return self._step("meta", ins, label, history)

    def _workdir(self, ins: Workdir, label: str) -> Step:
        path = ins.path
        wd = posixpath.normpath(posixpath.join(self.workdir, path))
        if wd.startswith("//"):
            wd = "/" + wd.lstrip("/")
        self.cfg["WorkingDir"] = wd
        if wd == "/":
            return self._step("meta", ins, label, "WORKDIR /")
        inputs = {"op": "workdir", "parent": self.key, "path": wd, "user": self.user, "epoch": self.p.epoch}
        step = self._keyed("workdir", ins, label, f"WORKDIR {wd}", inputs)
        return step

    def _keyed(self, op: str, ins: Instruction, label: str, history: str, inputs: dict[str, Any],
               **kw: Any) -> Step:
        key = key_of(inputs)
        step = self._step(op, ins, label, history, key=key, inputs=inputs, **kw)
        self.key = key
        return step

    def _run(self, ins: Run, label: str) -> Step:
        if ins.devices:
            raise DockerfileError("RUN --device is not supported by buildpy build (it needs the device "
                                  "entitlement of BuildKit's labs syntax)", ins.file, ins.line, ins.col)
        platform = self.p._stage_platform(self.stage)
        if platform.split("/")[:2] != host_platform().split("/")[:2]:
            raise DockerfileError(f"RUN on platform {platform} needs emulation of another machine, which "
                                  f"buildpy does not do (this machine is {host_platform()})",
                                  ins.file, ins.line, ins.col)
        argv = list(ins.args)
        inline: tuple[tuple[str, bytes], ...] = ()
        if ins.heredocs:
            if ins.shell and len(argv) == 1 and _is_single_heredoc(argv[0]):
                doc = ins.heredocs[0]
                data = doc.body()
                if data.startswith("#!"):
                    inline = ((doc.name, data.encode()),)
                    argv = [posixpath.join("/dev/pipes", doc.name)]
                else:
                    argv = [data]
            else:
                full = argv[0]
                for doc in ins.heredocs:
                    full += "\n" + doc.content + doc.name
                argv = [full]
        if ins.shell and not inline:
            argv = list(self.shell) + argv
        env = self.run_env()
        mounts = tuple(self._mount(ins, m) for m in ins.mounts)
        inputs = {
            "op": "run", "parent": self.key, "argv": argv, "inline": [[n, d.decode()] for n, d in inline],
            "env": [e for e in env if e.split("=", 1)[0] not in argslib.PROXY_ARGS],
            "cwd": self.workdir, "user": self.user, "network": ins.network or "default",
            "security": ins.security, "mounts": [_mount_inputs(m) for m in mounts], "epoch": self.p.epoch,
        }
        history = "RUN " + _run_command_string(argv, self.arg_order, self.args, self.env_dict()) + " # buildkit"
        files: dict[str, str] = {}
        for m in mounts:
            if m.selection is not None:
                from buildpy.planner.context import selection_files

                files.update({f"{m.target}:{k}": v for k, v in selection_files(m.selection).items()})
        return self._keyed("run", ins, label, history, inputs, env=env, argv=tuple(argv), inline_files=inline,
                           mounts=mounts, files=files)

    def _mount(self, ins: Run, m: Any) -> RunMountPlan:
        target = m.target
        if target and not target.startswith("/"):
            target = posixpath.join(self.workdir, target)
        target = posixpath.normpath(target) if target else target
        from_stage, from_image, from_dir = self._from(ins, m.from_) if m.from_ else (None, None, None)
        selection = None
        if from_dir is not None:  # its files are what the step reads: they are in its key
            selection = self._select_in(from_dir, ins, [m.source or "."], (), "RUN --mount")
        if m.type == "bind" and not m.from_:
            source = m.source or "."
            selection = self._select(ins, [source], (), what="RUN --mount")
        return RunMountPlan(m.type, target, m.source, m, from_stage, from_image, selection, from_dir)

    def _from(self, ins: Instruction, ref: str) -> tuple[int | None, Image | None, Path | None]:
        """What `--from=ref` names: a stage (by name or index), a `--build-context` (an image or
        a directory), or an image."""
        df = self.p.dockerfile
        for stage in df.stages:
            if stage.name is not None and stage.name == ref.lower():
                return stage.index, None, None
        if ref.isdigit() and int(ref) < len(df.stages):
            return int(ref), None, None
        named = self.p.request.named_contexts.get(ref)
        if named is not None:
            if named[0] == "dir":
                return None, None, Path(named[1])
            ref = named[1]
        return None, self.p._image(ref, ins), None

    def _select(self, ins: Instruction, sources: Sequence[str], excludes: Sequence[str], what: str) -> Selection:
        try:
            return self.p.reader.select(sources, excludes=excludes, what=what)
        except ContextError as e:
            raise PlanError(f"{ins.file}:{ins.line}: {e}") from None

    def _select_in(self, root: Path, ins: Instruction, sources: Sequence[str], excludes: Sequence[str],
                   what: str) -> Selection:
        """COPY --from a directory build context: read as the main context is, with its own
        .dockerignore."""
        from buildpy.planner.context import ContextError, ContextReader
        from buildpy.planner.dockerignore import Matcher, read_patterns

        try:
            reader = ContextReader(root, ignore=Matcher(read_patterns(root, root / "Dockerfile")))
            return reader.select(sources, excludes=excludes, what=what)
        except ContextError as e:
            raise DockerfileError(str(e), ins.file, ins.line, ins.col) from None

    def _copy(self, ins: FileCopy, label: str) -> Step:
        from buildpy.planner.context import selection_digest, selection_files

        what = "ADD" if isinstance(ins, Add) else "COPY"
        if ins.chmod:
            try:
                parse_chmod(ins.chmod)
            except ValueError as e:
                raise DockerfileError(str(e), ins.file, ins.line, ins.col) from None
        if isinstance(ins, Add):
            from buildpy.planner.remote import is_url
            from buildpy.planner.sources import is_git_url

            if any(is_git_url(src) for src in ins.sources):
                return self._add_git(ins, label)
            if ins.keep_git_dir is not None:
                raise DockerfileError("ADD --keep-git-dir applies only to git sources", ins.file, ins.line, ins.col)
            urls = [src for src in ins.sources if is_url(src)]
            if urls:
                return self._add_urls(ins, urls, label)
            if ins.checksum:
                raise DockerfileError("ADD --checksum applies only to URL sources", ins.file, ins.line, ins.col)
        from_ref = ins.from_ if isinstance(ins, Copy) else ""
        from_stage: int | None = None
        from_image: Image | None = None
        selection: Selection | None = None
        files: dict[str, str] = {}
        source_inputs: dict[str, Any]
        from_dir: Path | None = None
        if from_ref:
            from_stage, from_image, from_dir = self._from(ins, from_ref)
            if from_dir is not None:
                selection = self._select_in(from_dir, ins, ins.sources, ins.excludes, what)
                source_inputs = {"files": selection_digest(selection)}
                files = selection_files(selection)
            else:
                source_inputs = ({"stage": self.p.stages[from_stage].key} if from_stage is not None
                                 else {"image": from_image.digest if from_image else ""})
        elif ins.sources:
            selection = self._select(ins, ins.sources, ins.excludes, what)
            source_inputs = {"files": selection_digest(selection)}
            files = selection_files(selection)
        else:
            source_inputs = {}
        inputs = {
            "op": what.lower(), "parent": self.key, "sources": list(ins.sources), "dest": ins.dest,
            "inline": [[s.name, s.data] for s in ins.inline], "workdir": self.workdir,
            "chown": ins.chown, "chmod": ins.chmod, "link": ins.link, "excludes": list(ins.excludes),
            "parents": bool(getattr(ins, "parents", False)), "unpack": getattr(ins, "unpack", None),
            "epoch": self.p.epoch, **source_inputs,
        }
        flags = ""
        if getattr(ins, "parents", False):
            flags += " --parents"
        if ins.chown:
            flags += f" --chown={ins.chown}"
        if ins.chmod:
            flags += f" --chmod={ins.chmod}"
        history = f"{what}{flags} {' '.join(ins.sources)} {ins.dest}".replace("  ", " ") + " # buildkit"
        return self._keyed("copy", ins, label, history, inputs, selection=selection, from_stage=from_stage,
                           from_image=from_image, files=files, source_root=from_dir)


    def _add_git(self, ins: Add, label: str) -> Step:
        """ADD of a git repository (`URL#REF[:SUBDIR]`): checked out while planning (once per
        commit, in the store), its tree the source; `--checksum` must be the commit."""
        from buildpy.planner.sources import NO_AUTH, SourceError, from_git, resolve_commit, split_fragment

        auth = self.p.request.source_auth or NO_AUTH
        if len(ins.sources) != 1:
            raise DockerfileError("ADD of a git repository takes one source", ins.file, ins.line, ins.col)
        url = ins.sources[0]
        base, ref, _subdir = split_fragment(url)
        try:
            commit = resolve_commit(base, ref, f"ADD {base}", auth)
            if ins.checksum and ins.checksum != commit:
                raise PlanError(f"{ins.file}:{ins.line}: ADD {url}: the checksum {ins.checksum} is not the "
                                f"commit {commit}")
            checkout = from_git(url, self.p.store.root, keep_git_dir=bool(ins.keep_git_dir), auth=auth).directory
        except SourceError as e:
            raise PlanError(f"{ins.file}:{ins.line}: {e}") from None
        selection = ContextReader(checkout).select(["."], what="ADD")
        from buildpy.planner.context import selection_digest

        inputs = {
            "op": "add", "parent": self.key, "git": base, "commit": commit, "files": selection_digest(selection),
            "dest": ins.dest, "workdir": self.workdir, "chown": ins.chown, "chmod": ins.chmod, "link": ins.link,
            "keep_git_dir": bool(ins.keep_git_dir), "epoch": self.p.epoch,
        }
        flags = (f" --chown={ins.chown}" if ins.chown else "") + (f" --chmod={ins.chmod}" if ins.chmod else "")
        history = f"ADD{flags} {url} {ins.dest} # buildkit"
        return self._keyed("copy", ins, label, history, inputs, selection=selection, source_root=checkout)

    def _add_urls(self, ins: Add, urls: list[str], label: str) -> Step:
        import tempfile

        from buildpy.planner.remote import FetchError, fetch

        if len(urls) != len(ins.sources):
            raise DockerfileError("ADD with both URL and local sources is not supported: split it in two",
                                  ins.file, ins.line, ins.col)
        into = Path(tempfile.mkdtemp(dir=self.p.store.tmp_dir, prefix="add-url-"))
        self.p.temp_dirs.append(into)
        try:
            auth = self.p.request.source_auth
            downloads = [fetch(url, into, ins.checksum, auth.http_header(url) if auth else None) for url in urls]
        except FetchError as e:
            raise PlanError(f"{ins.file}:{ins.line}: {e}") from None
        selection = ContextReader(into).select([d.name for d in downloads], what="ADD")
        inputs = {
            "op": "add", "parent": self.key, "urls": [[u, d.digest] for u, d in zip(urls, downloads)],
            "dest": ins.dest, "workdir": self.workdir, "chown": ins.chown, "chmod": ins.chmod,
            "link": ins.link, "unpack": ins.unpack, "epoch": self.p.epoch,
            "mtimes": [d.mtime for d in downloads],
        }
        flags = (f" --chown={ins.chown}" if ins.chown else "") + (f" --chmod={ins.chmod}" if ins.chmod else "")
        history = f"ADD{flags} {' '.join(ins.sources)} {ins.dest} # buildkit"
        return self._keyed("copy", ins, label, history, inputs, selection=selection, source_root=into)


# --- helpers ---------------------------------------------------------------------------------


def _is_single_heredoc(word: str) -> bool:
    import re

    return re.fullmatch(r"[0-9]*<<-?\s*['\"]?[A-Za-z0-9_.-]+['\"]?", word.strip()) is not None


def _mount_inputs(m: RunMountPlan) -> dict[str, Any]:
    from buildpy.planner.context import selection_digest

    o = m.options
    out: dict[str, Any] = {"type": m.type, "target": m.target, "source": m.source, "readonly": o.readonly,
                           "id": o.id, "mode": o.mode, "uid": o.uid, "gid": o.gid, "env": o.env,
                           "required": o.required, "size": o.size, "sharing": o.sharing}
    if m.from_stage is not None:
        out["from_stage"] = m.from_stage
    if m.from_image is not None:
        out["from_image"] = m.from_image.digest
    if m.selection is not None:  # a bind of the context, or from= a directory build context
        out["files"] = selection_digest(m.selection)
    return out


def _run_command_string(argv: Sequence[str], arg_order: Sequence[str], args: Mapping[str, str],
                        env: Mapping[str, str]) -> str:
    """BuildKit's runCommandString: `|N K=V … ` before the command when ARGs are in scope."""
    pairs: dict[str, str] = {}
    for name in arg_order:
        value = env.get(name, args.get(name))
        if value is None:
            continue
        pairs[name] = value
    prefix = [f"|{len(pairs)}"] + [f"{k}={v}" for k, v in pairs.items()] if pairs else []
    return " ".join(prefix + list(argv))


def _parse_ports(ins: Expose) -> list[str]:
    out: list[str] = []
    for raw in ins.ports:
        port, _, proto = raw.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise DockerfileError(f"invalid proto: {proto}", ins.file, ins.line, ins.col)
        if ":" in port:
            port = port.rsplit(":", 1)[1]
        lo, dash, hi = port.partition("-")
        try:
            start = int(lo)
            end = int(hi) if dash else start
        except ValueError:
            raise DockerfileError(f"invalid containerPort: {port}", ins.file, ins.line, ins.col) from None
        if end < start:
            raise DockerfileError(f"invalid range specified for port: {port}", ins.file, ins.line, ins.col)
        out.extend(f"{p}/{proto}" for p in range(start, end + 1))
    return out


_SIGNALS = {
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE",
    "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU",
    "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
}


def _check_signal(ins: StopSignal) -> None:
    text = ins.signal
    if text.isdigit():
        if int(text) == 0:
            raise DockerfileError(f"invalid signal: {text}", ins.file, ins.line, ins.col)
        return
    name = text.upper().removeprefix("SIG")
    if name in _SIGNALS or (name.startswith("RTMIN") or name.startswith("RTMAX")):
        return
    raise DockerfileError(f"invalid signal: {text}", ins.file, ins.line, ins.col)


def _go_duration(ns: int) -> str:
    """Go's time.Duration.String()."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1_000_000)}ms"
    seconds = ns / 1_000_000_000
    hours = int(seconds // 3600)
    minutes = int((seconds - hours * 3600) // 60)
    rest = ns - (hours * 3600 + minutes * 60) * 1_000_000_000
    text = f"{_trim(rest / 1_000_000_000)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def apply_metadata(cfg: dict[str, Any], ins: Instruction, shell: tuple[str, ...],
                   cmd_set: bool) -> tuple[str, bool]:
    """A metadata instruction (ENV, LABEL, EXPOSE, VOLUME, STOPSIGNAL, USER, SHELL, CMD,
    ENTRYPOINT, HEALTHCHECK) applied to an image's `config` object: its history text, and
    whether CMD has been set in the stage (an ENTRYPOINT after none clears the CMD). One way for
    a build's steps and `docker commit --change`."""
    if isinstance(ins, Env):
        env = list(cfg.get("Env") or [])
        for k, v in ins.pairs:
            for i, e in enumerate(env):
                if e.split("=", 1)[0] == k:
                    env[i] = f"{k}={v}"
                    break
            else:
                env.append(f"{k}={v}")
        cfg["Env"] = env
        history = "ENV " + " ".join(f"{k}={v}" for k, v in ins.pairs)
    elif isinstance(ins, Label):
        labels = dict(cfg.get("Labels") or {})
        for k, v in ins.pairs:
            labels[k] = v
        cfg["Labels"] = labels
        history = "LABEL " + " ".join(f"{k}={v}" for k, v in ins.pairs)
    elif isinstance(ins, Expose):
        ports = _parse_ports(ins)
        exposed = dict(cfg.get("ExposedPorts") or {})
        for port in ports:
            exposed[port] = {}
        cfg["ExposedPorts"] = exposed
        history = f"EXPOSE [{' '.join(ports)}]"
    elif isinstance(ins, Volume):
        volumes = dict(cfg.get("Volumes") or {})
        for v in ins.paths:
            if not v:
                raise DockerfileError("VOLUME specified can not be an empty string", ins.file, ins.line, ins.col)
            volumes[v] = {}
        cfg["Volumes"] = volumes
        history = f"VOLUME [{' '.join(ins.paths)}]"
    elif isinstance(ins, StopSignal):
        _check_signal(ins)
        cfg["StopSignal"] = ins.signal
        history = f"STOPSIGNAL {ins.signal}"
    elif isinstance(ins, User):
        cfg["User"] = ins.user
        history = f"USER {ins.user}"
    elif isinstance(ins, Shell):
        cfg["Shell"] = list(ins.shell)
        history = f"SHELL [{' '.join(ins.shell)}]"
    elif isinstance(ins, (Cmd, Entrypoint)):
        argv = list(shell) + list(ins.args) if ins.shell else list(ins.args)
        quoted = "[" + " ".join(go_quote(a) for a in argv) + "]"
        if isinstance(ins, Cmd):
            cfg["Cmd"] = argv
            cfg["ArgsEscaped"] = True
            cmd_set = True
            history = f"CMD {quoted}"
        else:
            cfg["Entrypoint"] = argv
            if not cmd_set:
                cfg["Cmd"] = None
            history = f"ENTRYPOINT {quoted}"
    elif isinstance(ins, Healthcheck):
        hc: dict[str, Any] = {"Test": list(ins.test)}
        for name, value in (("Interval", ins.interval), ("Timeout", ins.timeout),
                            ("StartPeriod", ins.start_period), ("StartInterval", ins.start_interval),
                            ("Retries", ins.retries)):
            if value:
                hc[name] = value
        cfg["Healthcheck"] = hc
        history = (f"HEALTHCHECK {{Test:[{' '.join(ins.test)}] Interval:{_go_duration(ins.interval)} "
                   f"Timeout:{_go_duration(ins.timeout)} StartPeriod:{_go_duration(ins.start_period)} "
                   f"StartInterval:{_go_duration(ins.start_interval)} Retries:{ins.retries}}}")
    else:
        raise DockerfileError(f"{type(ins).__name__.upper()} is not supported by buildpy build",
                              ins.file, ins.line, ins.col)
    return history, cmd_set
