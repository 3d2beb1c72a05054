"""The rule table: every build check BuildKit ships, with its name, description, URL and message.

Names, descriptions, URLs and message formats are BuildKit's (frontend/dockerfile/linter/
ruleset.go), word for word, so `buildpy lint` says what `docker build --check` says. Where the
rule pages under docs/rules show an older wording, the source wins (the pages' "Output" blocks
lag behind it). InvalidBaseImagePlatform has no page and, as in BuildKit, no URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildpy.grammar.ast import go_quote

_DOCS = "https://docs.docker.com/go/dockerfile/rule/"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str
    url: str
    experimental: bool = False  # off unless `# check=experimental=NAME|all` turns it on


def _rule(name: str, kebab: str | None, description: str, experimental: bool = False) -> Rule:
    return Rule(name, description, f"{_DOCS}{kebab}/" if kebab else "", experimental)


RULES: tuple[Rule, ...] = (
    _rule("StageNameCasing", "stage-name-casing", "Stage names should be lowercase"),
    _rule("FromAsCasing", "from-as-casing", "The 'as' keyword should match the case of the 'from' keyword"),
    _rule("NoEmptyContinuation", "no-empty-continuation", "Empty continuation lines will become errors in a future release"),
    _rule(
        "ConsistentInstructionCasing",
        "consistent-instruction-casing",
        "All commands within the Dockerfile should use the same casing (either upper or lower)",
    ),
    _rule("DuplicateStageName", "duplicate-stage-name", "Stage names should be unique"),
    _rule("ReservedStageName", "reserved-stage-name", "Reserved words should not be used as stage names"),
    _rule(
        "JSONArgsRecommended",
        "json-args-recommended",
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
    ),
    _rule(
        "MaintainerDeprecated",
        "maintainer-deprecated",
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
    ),
    _rule("UndefinedArgInFrom", "undefined-arg-in-from", "FROM command must use declared ARGs"),
    _rule(
        "WorkdirRelativePath",
        "workdir-relative-path",
        "Relative workdir without an absolute workdir declared within the build can have unexpected "
        "results if the base image changes",
    ),
    _rule("UndefinedVar", "undefined-var", "Variables should be defined before their use"),
    _rule(
        "MultipleInstructionsDisallowed",
        "multiple-instructions-disallowed",
        "Multiple instructions of the same type should not be used in the same stage",
    ),
    _rule(
        "LegacyKeyValueFormat",
        "legacy-key-value-format",
        "Legacy key/value format with whitespace separator should not be used",
    ),
    _rule("InvalidBaseImagePlatform", None, "Base image platform does not match expected target platform"),
    _rule(
        "RedundantTargetPlatform",
        "redundant-target-platform",
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
    ),
    _rule(
        "SecretsUsedInArgOrEnv",
        "secrets-used-in-arg-or-env",
        "Sensitive data should not be used in the ARG or ENV commands",
    ),
    _rule(
        "InvalidDefaultArgInFrom",
        "invalid-default-arg-in-from",
        "Default value for global ARG results in an empty or invalid base image name",
    ),
    _rule(
        "FromPlatformFlagConstDisallowed",
        "from-platform-flag-const-disallowed",
        "FROM --platform flag should not use a constant value",
    ),
    _rule("CopyIgnoredFile", "copy-ignored-file", "Attempting to Copy file that is excluded by .dockerignore"),
    _rule(
        "InvalidDefinitionDescription",
        "invalid-definition-description",
        "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. "
        "If this is not intended to be a description comment, add an empty line or comment between the "
        "instruction and the comment.",
        experimental=True,
    ),
    _rule("ExposeProtoCasing", "expose-proto-casing", "Protocol in EXPOSE instruction should be lowercase"),
    _rule(
        "ExposeInvalidFormat",
        "expose-invalid-format",
        "IP address and host-port mapping should not be used in EXPOSE instruction. "
        "This will become an error in a future release",
    ),
)

BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULES}


# --- messages (BuildKit's Format functions) ------------------------------------------------


def _suggest(text: str, suggestion: str | None, prefix: str = "") -> str:
    return f"{text} (did you mean {prefix}{suggestion}?)" if suggestion else text


def stage_name_casing(name: str) -> str:
    return f"Stage name '{name}' should be lowercase"


def from_as_casing(from_word: str, as_word: str) -> str:
    return f"'{as_word}' and '{from_word}' keywords' casing do not match"


def no_empty_continuation() -> str:
    return "Empty continuation line"


def consistent_instruction_casing(command: str, casing: str) -> str:
    return f"Command '{command}' should match the case of the command majority ({casing})"


def duplicate_stage_name(name: str) -> str:
    return f"Duplicate stage name {go_quote(name)}, stage names should be unique"


def reserved_stage_name(name: str) -> str:
    return f"Stage name should not use the same name as reserved stage {go_quote(name)}"


def json_args_recommended(instruction: str) -> str:
    return f"JSON arguments recommended for {instruction} to prevent unintended behavior related to OS signals"


def maintainer_deprecated() -> str:
    return "Maintainer instruction is deprecated in favor of using label"


def undefined_arg_in_from(name: str, suggestion: str | None) -> str:
    return _suggest(f"FROM argument '{name}' is not declared", suggestion)


def workdir_relative_path(workdir: str) -> str:
    return f"Relative workdir {go_quote(workdir)} can have unexpected results if the base image changes"


def undefined_var(name: str, suggestion: str | None) -> str:
    return _suggest(f"Usage of undefined variable '${name}'", suggestion, "$")


def multiple_instructions_disallowed(instruction: str) -> str:
    return (
        f"Multiple {instruction} instructions should not be used in the same stage because only the last one "
        "will be used"
    )


def legacy_key_value_format(instruction: str) -> str:
    return f'"{instruction} key=value" should be used instead of legacy "{instruction} key value" format'


def invalid_base_image_platform(image: str, expected: str, actual: str) -> str:
    return (
        f"Base image {image} was pulled with platform {go_quote(actual)}, "
        f"expected {go_quote(expected)} for current build"
    )


def redundant_target_platform(platform_word: str) -> str:
    return f"Setting platform to predefined {platform_word} in FROM is redundant as this is the default behavior"


def secrets_used_in_arg_or_env(instruction: str, key: str) -> str:
    return f"Do not use ARG or ENV instructions for sensitive data ({instruction} {go_quote(key)})"


def invalid_default_arg_in_from(base: str) -> str:
    return f"Default value for ARG {base} results in empty or invalid base image name"


def from_platform_flag_const_disallowed(platform: str) -> str:
    return f"FROM --platform flag should not use constant value {go_quote(platform)}"


def copy_ignored_file(command: str, path: str) -> str:
    return f"Attempting to {command} file {go_quote(path)} that is excluded by .dockerignore"


def invalid_definition_description(instruction: str, name: str) -> str:
    return f"Comment for {instruction} should follow the format: `# {name} <description>`"


def expose_proto_casing(port: str) -> str:
    return f"Defined protocol '{port}' in EXPOSE instruction should be lowercase"


def expose_invalid_format(port: str) -> str:
    return f"EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"
