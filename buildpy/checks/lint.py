"""Running the checks: a Dockerfile's text in, every finding out (`lint`).

The walk follows BuildKit's front end (dockerfile2llb's toDispatchState and dispatch): the
parser's warnings, then each instruction as it is parsed (casing, MAINTAINER, descriptions),
then the stage list (names, casing majority), then the global ARGs and each FROM (undeclared,
redundant or constant platforms, defaults that make no image name), then every stage's
instructions in its own ARG/ENV scope (undefined variables, legacy ENV/LABEL, secrets, JSON
arguments, repeated CMD/ENTRYPOINT/HEALTHCHECK, relative WORKDIR, EXPOSE formats, COPY of
ignored files). All stages are checked, reachable from the target or not, as `--check` does.

What a static check cannot know is asked of the caller: the `.dockerignore` matcher, a base
image's platform and its environment. Without them those parts stay quiet (a base image's
environment is taken to be PATH alone, as in most images).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from buildpy.checks import rules as R
from buildpy.checks.config import CheckConfig, config_from_directive, parse_options, with_comments
from buildpy.checks.findings import Finding, LintResult
from buildpy.checks.platform import Platform, parse_platform
from buildpy.grammar.ast import Node, ParseResult
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.expand import expand_instruction
from buildpy.grammar.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    FileCopy,
    From,
    Healthcheck,
    Instruction,
    Label,
    Shell,
    Workdir,
    instruction_from_node,
)
from buildpy.grammar.parser import parse
from buildpy.grammar.shell import expand_word_tracked
from buildpy.grammar.stages import group_stages, is_image_reference, stages_from
from buildpy.grammar.suggest import closest

__all__ = ["lint", "DEFAULT_PATH"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})
_RESERVED_STAGE_NAMES = frozenset({"context", "scratch"})
_SECRET_TOKENS = "apikey|auth|credential|credentials|key|password|pword|passwd|secret|token"
_SECRET = re.compile(rf"(?i)(?:_|^)(?:{_SECRET_TOKENS})(?:_|$)")
_SECRET_ALLOWED = re.compile(r"(?i)(?:_|^)(?:public|file|version)(?:_|$)")
_URL_SOURCE = re.compile(r"^(?:https?://|git@|git://)")
_ROOT_IGNORING = frozenset({"*", "**", "**/*"})


def lint(
    source: bytes | str,
    name: str = "Dockerfile",
    *,
    ignored: Callable[[str], bool] | None = None,
    base_platform: Callable[[str], str | None] | None = None,
    base_env: Callable[[str], Mapping[str, str] | None] | None = None,
    target_platform: str = "linux/amd64",
    build_args: Mapping[str, str] = {},
    config: CheckConfig | None = None,
) -> LintResult:
    """Every finding of the enabled checks in a Dockerfile; never raises.

    ignored: whether a context path (clean, relative, "/"-separated) is left out by
        `.dockerignore` — pass `planner.dockerignore.Matcher(patterns).matches`: its matcher's
        `exclusions` and `patterns` are honoured as BuildKit does (no check when a pattern is an
        exception `!…`; COPY of the context root only when `*`, `**` or `**/*` leaves all out).
        None: CopyIgnoredFile does not run.
    base_platform: the platform ("linux/arm64") of a base image by name, None when unknown.
        None: InvalidBaseImagePlatform does not run.
    base_env: a base image's environment by name, None when unknown (then PATH alone).
    target_platform, build_args: as the build would get them (`BUILDKIT_DOCKERFILE_CHECK`
        among the build args replaces the directive, as in BuildKit).
    config: the configuration to use instead of the directive's (see `config.merge`).
    """
    run = _Run(name, ignored, base_platform, base_env, target_platform, dict(build_args))
    try:
        run.config = _configure(source, name, config, build_args)
    except DockerfileError as e:
        run.fail(e)
    try:
        run.lint(source)
    except DockerfileError as e:
        run.fail(e)
    except Exception as e:  # a check's own bug must not stop a build: say so, as an error
        run.fail(DockerfileError(f"internal error in build checks: {type(e).__name__}: {e}", name))
    findings = sorted(run.findings, key=lambda f: (f.line, f.end_line))
    return LintResult(tuple(findings), run.config, run.error)


def _configure(
    source: bytes | str, name: str, config: CheckConfig | None, build_args: Mapping[str, str]
) -> CheckConfig:
    if config is not None:
        return config
    override = build_args.get("BUILDKIT_DOCKERFILE_CHECK")
    if override is not None:
        try:
            return parse_options(override)
        except ValueError as e:
            raise DockerfileError(f"BUILDKIT_DOCKERFILE_CHECK: {e}", name) from None
    return config_from_directive(source, name)


@dataclass
class _StageState:
    """What a stage passes to a stage built FROM it."""

    env: dict[str, str]
    declared: set[str]
    shell_set: bool = False
    workdir_set: bool = False


@dataclass
class _Run:
    file: str
    ignored: Callable[[str], bool] | None
    base_platform: Callable[[str], str | None] | None
    base_env: Callable[[str], Mapping[str, str] | None] | None
    target_platform: str
    build_args: dict[str, str]
    config: CheckConfig = field(default_factory=CheckConfig)
    findings: list[Finding] = field(default_factory=list)
    error: DockerfileError | None = None
    escape: str = "\\"

    # --- reporting ----------------------------------------------------------------------

    def fail(self, error: DockerfileError) -> None:
        if self.error is None:
            if not error.file or error.file == "Dockerfile":
                error.file = self.file
            self.error = error

    def emit(self, rule: str, message: str, node: Node | None, config: CheckConfig | None = None,
             line: int = 0) -> None:
        spec = R.BY_NAME[rule]
        if not (config or self.config).enabled(rule, spec.experimental):
            return
        if node is not None:
            start, end, col = node.start_line, node.end_line, node.col
        else:
            start, end, col = line, line, 0
        self.findings.append(Finding(rule, message, self.file, start, end, col, spec.description, spec.url))

    def local(self, node: Node) -> CheckConfig:
        return with_comments(self.config, node.comments) if node.comments else self.config

    # --- the walk -----------------------------------------------------------------------

    def lint(self, source: bytes | str) -> None:
        result = parse(source, self.file)
        self.escape = result.escape
        for warning in result.warnings:
            if warning.rule == "NoEmptyContinuation":
                self.emit("NoEmptyContinuation", R.no_empty_continuation(), None, line=warning.line)
        typed = self.typed(result)
        if typed is None:
            return
        meta_args, groups = typed
        if not groups:
            return
        self.stage_names(groups)
        self.command_casing(groups)
        self.stages(meta_args, groups)

    def typed(self, result: ParseResult) -> tuple[list[Arg], list[tuple[From, list[Instruction]]]] | None:
        """Typed instructions in stages, with the checks BuildKit runs while parsing them.

        None when an instruction is wrong (the error is kept; checks of earlier ones stand)."""
        try:
            dockerfile = stages_from(result)
        except DockerfileError as e:
            dag_error: DockerfileError | None = e
            instructions = []
            for node in result.nodes:
                self.node_checks(node)
                try:
                    instruction = instruction_from_node(node, self.file)
                except DockerfileError as e:
                    self.fail(e)
                    return None
                self.definition_description(instruction)
                instructions.append(instruction)
        else:
            dag_error = None
            instructions = list(dockerfile.meta_args)
            for stage in dockerfile.stages:
                instructions.append(stage.start)
                instructions.extend(stage.instructions)
            for instruction in instructions:
                self.node_checks(instruction.node)
                self.definition_description(instruction)
        meta_args, groups, _stray = group_stages(instructions)  # a stray one: stages_from said so already
        if dag_error is not None:
            self.fail(dag_error)
        return meta_args, groups

    def node_checks(self, node: Node) -> None:
        """StageNameCasing, FromAsCasing, MaintainerDeprecated: BuildKit's ParseInstruction."""
        command = node.command
        if command == "maintainer":
            self.emit("MaintainerDeprecated", R.maintainer_deprecated(), node, self.local(node))
        elif command == "from":
            args = node.args
            if len(args) == 3 and args[2] != args[2].lower():
                self.emit("StageNameCasing", R.stage_name_casing(args[2]), node, self.local(node))
            if len(args) >= 3:
                keyword = node.keyword
                lower, upper = keyword == keyword.lower(), keyword == keyword.upper()
                if (lower and args[1] != args[1].lower()) or (upper and not lower and args[1] != args[1].upper()):
                    self.emit("FromAsCasing", R.from_as_casing(keyword, args[1]), node, self.local(node))

    def definition_description(self, instruction: Instruction) -> None:
        """InvalidDefinitionDescription (experimental): the comment right before a named FROM or
        an ARG must start with the name it describes."""
        node = instruction.node
        if not node.comments:
            return
        if isinstance(instruction, From) and instruction.name:
            what, keys = "FROM", [instruction.name]
        elif isinstance(instruction, Arg) and instruction.args:
            what, keys = "ARG", [a.name for a in instruction.args]
        else:
            return
        if node.comments[-1].split(" ")[0] in keys:
            return
        example = keys[0] if len(keys) == 1 else "<arg_key>"
        self.emit("InvalidDefinitionDescription", R.invalid_definition_description(what, example), node,
                  self.local(node))

    def stage_names(self, groups: list[tuple[From, list[Instruction]]]) -> None:
        seen: set[str] = set()
        for start, _ in groups:
            if not start.name:
                continue
            if start.name in _RESERVED_STAGE_NAMES:
                self.emit("ReservedStageName", R.reserved_stage_name(start.name), start.node)
            if start.name in seen:
                self.emit("DuplicateStageName", R.duplicate_stage_name(start.name), start.node)
            seen.add(start.name)

    def command_casing(self, groups: list[tuple[From, list[Instruction]]]) -> None:
        nodes = [n for start, body in groups for n in (start.node, *(i.node for i in body))]
        lower = upper = 0
        for node in nodes:
            word = node.keyword
            if word == word.lower():
                lower += 1
            elif word == word.upper():
                upper += 1
        majority_lower = lower > upper
        for node in nodes:
            word = node.keyword
            if majority_lower and word != word.lower():
                self.emit("ConsistentInstructionCasing", R.consistent_instruction_casing(word, "lowercase"), node)
            elif not majority_lower and word != word.upper():
                self.emit("ConsistentInstructionCasing", R.consistent_instruction_casing(word, "uppercase"), node)

    # --- ARGs, FROM and the stages -------------------------------------------------------

    def predefined(self, build_args: Mapping[str, str]) -> dict[str, str]:
        target = parse_platform(self.target_platform) or Platform("linux", "amd64")
        values = {
            "BUILDPLATFORM": str(target), "BUILDOS": target.os, "BUILDOSVERSION": "",
            "BUILDARCH": target.arch, "BUILDVARIANT": target.variant,
            "TARGETPLATFORM": str(target), "TARGETOS": target.os, "TARGETOSVERSION": "",
            "TARGETARCH": target.arch, "TARGETVARIANT": target.variant, "TARGETSTAGE": "default",
        }
        for key in values:
            if key in build_args:
                values[key] = build_args[key]
        return values

    def meta_args(self, meta: list[Arg], build_args: Mapping[str, str]) -> tuple[dict[str, str], set[str]]:
        """The global ARGs' values (BuildKit's buildMetaArgs) and every name they declare."""
        env = self.predefined(build_args)
        names: set[str] = set()
        for instruction in meta:
            for arg in instruction.args:
                names.add(arg.name)
                if arg.name in build_args:
                    env[arg.name] = build_args[arg.name]
                elif arg.default is not None:
                    try:
                        env[arg.name] = expand_word_tracked(arg.default, env, self.escape).result
                    except DockerfileError as e:
                        raise e.located(line=instruction.line, col=instruction.col) from None
        return env, names

    def stages(self, meta: list[Arg], groups: list[tuple[From, list[Instruction]]]) -> None:
        self.invalid_default_args(meta, groups)
        global_env, declared = self.meta_args(meta, self.build_args)
        arg_keys = declared | set(global_env)
        states: dict[str, _StageState] = {}
        for index, (start, body) in enumerate(groups):
            node = start.node
            local = self.local(node)
            base = self.from_word(start.image, global_env, arg_keys, node, local)
            platform_word = start.platform
            expected: Platform | None = parse_platform(self.target_platform)
            if platform_word:
                platform = self.platform_flag(start, global_env, arg_keys, local)
                if platform is not None:
                    expected = platform
            parent = states.get(base) if base is not None else None
            if parent is not None:
                state = _StageState(dict(parent.env), set(parent.declared), parent.shell_set, parent.workdir_set)
            else:
                env = None
                if base and base != "scratch" and self.base_env is not None:
                    env = self.base_env(base)
                state = _StageState(dict(env) if env is not None else {"PATH": DEFAULT_PATH}, set())
                if base and base != "scratch" and self.base_platform is not None and expected is not None:
                    self.base_image_platform(base, expected, node)
            self.dispatch(state, body, global_env)
            states[start.name or str(index)] = state
            if start.name is None:
                states.setdefault(str(index), state)

    def from_word(self, word: str, env: Mapping[str, str], arg_keys: set[str], node: Node,
                  local: CheckConfig) -> str | None:
        try:
            expansion = expand_word_tracked(word, env, self.escape)
        except DockerfileError as e:
            self.fail(e.located(line=node.start_line, col=node.col))
            return None
        self.undeclared_from_args(expansion.unmatched, arg_keys, node, local)
        return expansion.result

    def undeclared_from_args(self, unmatched: frozenset[str], arg_keys: set[str], node: Node,
                             local: CheckConfig) -> None:
        for name in sorted(unmatched):
            if name in arg_keys:
                continue
            suggestion = closest(name, arg_keys, case_sensitive=True)
            self.emit("UndefinedArgInFrom", R.undefined_arg_in_from(name, suggestion), node, local)

    def platform_flag(self, start: From, env: Mapping[str, str], arg_keys: set[str],
                      local: CheckConfig) -> Platform | None:
        node = start.node
        try:
            match = expand_word_tracked(start.platform, env, self.escape)
        except DockerfileError as e:
            self.fail(e.located(line=node.start_line, col=node.col))
            return None
        self.undeclared_from_args(match.unmatched, arg_keys, node, local)
        if match.matched == {"TARGETPLATFORM"} and not match.unmatched:
            if match.result == env.get("TARGETPLATFORM"):
                self.emit("RedundantTargetPlatform", R.redundant_target_platform(start.platform), node, local)
        platform = parse_platform(match.result) if match.result else None
        if not match.matched and not match.unmatched and platform is not None:
            stage = start.node.args[2] if start.name else ""
            if platform.os not in stage and platform.arch not in stage:
                self.emit("FromPlatformFlagConstDisallowed", R.from_platform_flag_const_disallowed(match.result),
                          node, local)
        return platform

    def invalid_default_args(self, meta: list[Arg], groups: list[tuple[From, list[Instruction]]]) -> None:
        """InvalidDefaultArgInFrom: each FROM with only the ARGs' defaults must name an image."""
        try:
            env, _ = self.meta_args(meta, {})
            for start, _ in groups:
                result = expand_word_tracked(start.image, env, self.escape).result
                if not is_image_reference(result):
                    self.emit("InvalidDefaultArgInFrom", R.invalid_default_arg_in_from(start.image), start.node)
        except DockerfileError:
            return  # BuildKit gives this check up; the build reports the error

    def base_image_platform(self, image: str, expected: Platform, node: Node) -> None:
        assert self.base_platform is not None
        actual_text = self.base_platform(image)
        if not actual_text:
            return
        actual = parse_platform(actual_text)
        if actual is None:
            return
        if (actual.os, actual.arch) != (expected.os, expected.arch):
            self.emit("InvalidBaseImagePlatform", R.invalid_base_image_platform(image, str(expected), str(actual)), node)

    # --- inside a stage -----------------------------------------------------------------

    def dispatch(self, state: _StageState, body: list[Instruction], global_env: Mapping[str, str]) -> None:
        used_once: dict[type, Node] = {}
        for instruction in body:
            node = instruction.node
            local = self.local(node)
            if isinstance(instruction, Arg):
                self.arg(state, instruction, global_env, local)
                continue
            unmatched: list[frozenset[str]] = []
            try:
                expanded = expand_instruction(
                    instruction, state.env, self.escape, lambda _i, names: unmatched.append(names)
                )
            except DockerfileError as e:
                self.fail(e)
                continue
            if unmatched:
                self.undefined_vars(unmatched[0], state, node, local)
            if isinstance(expanded, Env):
                for key, value in expanded.pairs:
                    if expanded.legacy:
                        self.emit("LegacyKeyValueFormat", R.legacy_key_value_format(node.keyword), node, local)
                    self.secret("ENV", key, node, local)
                    state.env[key] = value
            elif isinstance(expanded, Label):
                if expanded.legacy:
                    self.emit("LegacyKeyValueFormat", R.legacy_key_value_format(node.keyword), node, local)
            elif isinstance(expanded, (Cmd, Entrypoint, Healthcheck)):
                kind = type(expanded)
                if kind in used_once:
                    self.emit("MultipleInstructionsDisallowed", R.multiple_instructions_disallowed(node.keyword),
                              used_once[kind], local)
                used_once[kind] = node
                if isinstance(expanded, (Cmd, Entrypoint)) and expanded.shell and not state.shell_set:
                    self.emit("JSONArgsRecommended", R.json_args_recommended(node.keyword), node, local)
            elif isinstance(expanded, Shell):
                state.shell_set = True
            elif isinstance(expanded, Workdir):
                if not state.workdir_set and not expanded.path.startswith("/"):
                    self.emit("WorkdirRelativePath", R.workdir_relative_path(expanded.path), node, local)
                state.workdir_set = True
            elif isinstance(expanded, Expose):
                for port in expanded.ports:
                    self.expose(port, node, local)
            elif isinstance(expanded, FileCopy):
                self.copy_sources(expanded, node, local)

    def arg(self, state: _StageState, instruction: Arg, global_env: Mapping[str, str], local: CheckConfig) -> None:
        node = instruction.node
        for arg in instruction.args:
            self.secret("ARG", arg.name, node, local)
            value: str | None = None
            if arg.name in self.build_args:
                value = self.build_args[arg.name]
            elif arg.default is not None:
                try:
                    expansion = expand_word_tracked(arg.default, state.env, self.escape)
                except DockerfileError as e:
                    self.fail(e.located(line=node.start_line, col=node.col))
                    return
                self.undefined_vars(expansion.unmatched, state, node, local)
                value = expansion.result
            else:
                value = global_env.get(arg.name)
            if value is not None and arg.name not in _NON_ENV_ARGS:
                state.env[arg.name] = value
            state.declared.add(arg.name)

    def undefined_vars(self, names: frozenset[str], state: _StageState, node: Node, local: CheckConfig) -> None:
        for name in sorted(names):
            if name in state.declared or name in _NON_ENV_ARGS:
                continue
            suggestion = closest(name, state.env, case_sensitive=True)
            self.emit("UndefinedVar", R.undefined_var(name, suggestion), node, local)

    def secret(self, what: str, key: str, node: Node, local: CheckConfig) -> None:
        if _SECRET.search(key) and not _SECRET_ALLOWED.search(key):
            self.emit("SecretsUsedInArgOrEnv", R.secrets_used_in_arg_or_env(what, key), node, local)

    def expose(self, raw: str, node: Node, local: CheckConfig) -> None:
        parts = raw.split(":")
        if len(parts) == 1:
            ip, host, container = "", "", parts[0]
        elif len(parts) == 2:
            ip, host, container = "", parts[0], parts[1]
        else:
            ip, host, container = ":".join(parts[:-2]), parts[-2], parts[-1]
        port, _, proto = container.partition("/")
        if not port or proto.lower() not in ("", "tcp", "udp", "sctp"):
            return  # the build fails on it ("invalid proto", "no port specified")
        if proto != proto.lower():
            self.emit("ExposeProtoCasing", R.expose_proto_casing(raw), node, local)
        if ip or host:
            self.emit("ExposeInvalidFormat", R.expose_invalid_format(raw), node, local)

    def copy_sources(self, instruction: FileCopy, node: Node, local: CheckConfig) -> None:
        ignored = self.ignored
        if ignored is None or (isinstance(instruction, Copy) and instruction.from_):
            return
        owner = getattr(ignored, "__self__", ignored)
        if getattr(owner, "exclusions", False) is True:
            return  # BuildKit: exceptions make a static answer unreliable
        patterns = getattr(owner, "patterns", None)
        command = "Add" if isinstance(instruction, Add) else "Copy"
        for source in instruction.sources:
            if isinstance(instruction, Add) and _URL_SOURCE.match(source):
                continue
            path = _go_clean(source)
            if path in (".", "/"):
                if patterns is None or not any(p in _ROOT_IGNORING for p in patterns):
                    continue
            if ignored(path):
                self.emit("CopyIgnoredFile", R.copy_ignored_file(command, path), node, local)


def _go_clean(path: str) -> str:
    """Go's filepath.Clean for "/" paths."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned
