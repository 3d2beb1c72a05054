"""Build checks (buildpy.checks): every rule fires where BuildKit's does and stays quiet on a near
miss; the `# check=` directive; text/JSON/SARIF shapes; BuildKit's parser test files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildpy.checks.config import CheckConfig, config_from_directive, merge
from buildpy.checks.lint import lint
from buildpy.checks.report import render_json, render_sarif, render_text
from buildpy.checks.rules import RULES
from buildpy.grammar.errors import DockerfileError

TESTFILES = Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance" / "buildkit" / "parser-testfiles"
EXPERIMENTAL = CheckConfig(experimental_all=True)


def found(text: str, allow_error: bool = False, **kw) -> list[tuple[int, str, str]]:
    result = lint(text.encode(), **kw)
    assert allow_error or result.error is None, result.error
    return [(f.line, f.rule, f.message) for f in result.findings]


def of(rule: str, text: str, **kw) -> list[tuple[int, str]]:
    return [(line, message) for line, name, message in found(text, **kw) if name == rule]


def matcher(patterns):
    from buildpy.planner.dockerignore import Matcher  # the caller's side of the wiring

    return Matcher(patterns).matches


# rule, Dockerfile that fires, expected [(line, message)], near miss, extra lint() arguments
CASES = [
    ("StageNameCasing", "FROM alpine AS BuilderBase\n", [(1, "Stage name 'BuilderBase' should be lowercase")],
     "FROM alpine AS builder-base\n", {}),
    ("FromAsCasing", "FROM debian:latest as builder\n", [(1, "'as' and 'FROM' keywords' casing do not match")],
     "from debian:latest as deb-builder\n", {}),
    ("NoEmptyContinuation", "FROM alpine\nEXPOSE \\\n\n80\n", [(4, "Empty continuation line")],
     "FROM alpine\nEXPOSE \\\n# Port\n80\n", {}),
    ("ConsistentInstructionCasing",
     "From alpine\nRun echo hello > /greeting.txt\nEntRYpOiNT [\"cat\", \"/greeting.txt\"]\nCMD [\"x\"]\n",
     [(1, "Command 'From' should match the case of the command majority (uppercase)"),
      (2, "Command 'Run' should match the case of the command majority (uppercase)"),
      (3, "Command 'EntRYpOiNT' should match the case of the command majority (uppercase)")],
     "from alpine\nrun echo hello > /greeting.txt\nentrypoint [\"cat\", \"/greeting.txt\"]\n", {}),
    ("DuplicateStageName", "FROM debian:latest AS builder\nRUN true\n\nFROM golang:latest AS builder\n",
     [(4, 'Duplicate stage name "builder", stage names should be unique')],
     "FROM debian:latest AS deb-builder\nFROM golang:latest AS go-builder\n", {"allow_error": True}),
    ("ReservedStageName", "FROM alpine AS scratch\nFROM alpine AS context\n",
     [(1, 'Stage name should not use the same name as reserved stage "scratch"'),
      (2, 'Stage name should not use the same name as reserved stage "context"')],
     "FROM scratch\nFROM alpine AS builder\n", {}),
    ("JSONArgsRecommended", "FROM alpine\nENTRYPOINT my-program start\n",
     [(2, "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals")],
     "FROM alpine AS base\nSHELL [\"/bin/bash\", \"-c\"]\nFROM base\nENTRYPOINT echo hi\n", {}),
    ("MaintainerDeprecated", "FROM scratch\nMAINTAINER moby@example.com\n",
     [(2, "Maintainer instruction is deprecated in favor of using label")],
     "FROM scratch\nLABEL org.opencontainers.image.authors=\"moby@example.com\"\n", {}),
    ("UndefinedArgInFrom", "FROM node:22${VARIANT} AS jsbuilder\n",
     [(1, "FROM argument 'VARIANT' is not declared")],
     "ARG VARIANT=\"-alpine3.20\"\nFROM node:22${VARIANT} AS jsbuilder\n", {}),
    ("WorkdirRelativePath", "FROM nginx AS web\nWORKDIR usr/share/nginx/html\nCOPY public .\n",
     [(2, 'Relative workdir "usr/share/nginx/html" can have unexpected results if the base image changes')],
     "FROM scratch AS a\nWORKDIR /app\nFROM a AS b\nWORKDIR subdir/\n", {}),
    ("UndefinedVar", "FROM alpine\nENV PATH=$PAHT:/app/bin\n",
     [(2, "Usage of undefined variable '$PAHT' (did you mean $PATH?)")],
     "FROM python AS base\nARG VERSION=$PYTHON_VERSION\n",
     {"base_env": lambda image: {"PATH": "/bin", "PYTHON_VERSION": "3.13"} if image == "python" else None}),
    ("MultipleInstructionsDisallowed",
     "FROM alpine\nENTRYPOINT [\"echo\", \"Hello, Norway!\"]\nENTRYPOINT [\"echo\", \"Hello, Sweden!\"]\n",
     [(2, "Multiple ENTRYPOINT instructions should not be used in the same stage because only the last one "
          "will be used")],
     "FROM python:alpine\nHEALTHCHECK --interval=1s --timeout=3s \\\n  CMD [\"curl\", \"-f\", \"http://localhost:8080\"]\n"
     "CMD [\"python\", \"-m\", \"http.server\", \"8080\"]\n", {}),
    ("LegacyKeyValueFormat", "FROM alpine\nENV DEPS \\\n    curl \\\n    git\n",
     [(2, '"ENV key=value" should be used instead of legacy "ENV key value" format')],
     "FROM alpine\nENV DEPS=\"\\\n    curl \\\n    git\"\n", {}),
    ("RedundantTargetPlatform", "FROM --platform=$TARGETPLATFORM alpine AS builder\n",
     [(1, "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior")],
     "FROM --platform=$BUILDPLATFORM alpine AS builder\n", {}),
    ("SecretsUsedInArgOrEnv", "FROM alpine\nARG AWS_ACCESS_KEY_ID\nARG AWS_SECRET_ACCESS_KEY\n",
     [(2, 'Do not use ARG or ENV instructions for sensitive data (ARG "AWS_ACCESS_KEY_ID")'),
      (3, 'Do not use ARG or ENV instructions for sensitive data (ARG "AWS_SECRET_ACCESS_KEY")')],
     "FROM alpine\nARG PUBLIC_KEY\nENV SECRET_FILE=/run/secrets/x\nENV keyboard=us\n", {}),
    ("InvalidDefaultArgInFrom", "ARG TAG\nFROM busybox:${TAG}\n",
     [(2, "Default value for ARG busybox:${TAG} results in empty or invalid base image name")],
     "ARG TAG\nFROM alpine:${TAG:-3.14}\n", {}),
    ("FromPlatformFlagConstDisallowed", "FROM --platform=linux/amd64 alpine AS base\n",
     [(1, 'FROM --platform flag should not use constant value "linux/amd64"')],
     "FROM --platform=linux/amd64 alpine AS build_amd64\nFROM --platform=linux/arm64 alpine AS build_arm64\n", {}),
    ("CopyIgnoredFile", "FROM scratch\nCOPY ./tmp/helloworld.txt /helloworld.txt\nADD tmp /x\n",
     [(2, 'Attempting to Copy file "tmp/helloworld.txt" that is excluded by .dockerignore'),
      (3, 'Attempting to Add file "tmp" that is excluded by .dockerignore')],
     "FROM scratch\nCOPY ./forever/helloworld.txt /helloworld.txt\nCOPY --from=other tmp/x /\n",
     {"ignored": "tmp"}),
    ("InvalidDefinitionDescription", "# a non-descriptive comment\nFROM scratch AS base\n# another one\nARG VERSION=1\n",
     [(2, "Comment for FROM should follow the format: `# base <description>`"),
      (4, "Comment for ARG should follow the format: `# VERSION <description>`")],
     "# base is a stage for compiling source\nFROM scratch AS base\n# VERSION This is the version number.\nARG VERSION=1\n",
     {"config": EXPERIMENTAL}),
    ("ExposeProtoCasing", "FROM alpine\nEXPOSE 80/TcP\n",
     [(2, "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase")],
     "FROM alpine\nEXPOSE 80/tcp\n", {}),
    ("ExposeInvalidFormat", "FROM alpine\nEXPOSE 127.0.0.1:80:80\n",
     [(2, "EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80'")],
     "FROM alpine\nEXPOSE 80\n", {}),
    ("InvalidBaseImagePlatform", "FROM alpine\n",
     [(1, 'Base image alpine was pulled with platform "linux/arm64", expected "linux/amd64" for current build')],
     "FROM --platform=linux/arm64 alpine AS arm64\n", {"base_platform": lambda image: "linux/arm64"}),
]


def _args(kw: dict) -> dict:
    kw = dict(kw)
    if kw.get("ignored") == "tmp":
        kw["ignored"] = matcher(["tmp"])
    return kw


def test_every_rule_has_a_case():
    assert sorted(c[0] for c in CASES) == sorted(r.name for r in RULES)
    assert len(RULES) == 22


@pytest.mark.parametrize("rule,bad,expected,good,kw", CASES, ids=[c[0] for c in CASES])
def test_rule_fires(rule, bad, expected, good, kw):
    assert of(rule, bad, **_args(kw)) == expected


@pytest.mark.parametrize("rule,bad,expected,good,kw", CASES, ids=[c[0] for c in CASES])
def test_rule_near_miss(rule, bad, expected, good, kw):
    assert of(rule, good, **_args(kw)) == []


def test_duplicate_stage_name_is_also_buildpys_error():
    # BuildKit builds it (a warning only); buildpy's stage DAG refuses it: both are reported
    result = lint(b"FROM scratch AS b\nFROM scratch AS b\n")
    assert [f.rule for f in result.findings] == ["DuplicateStageName"]
    assert result.error is not None and "duplicate stage name" in result.error.message


def test_finding_fields():
    (f,) = lint(b"FROM alpine\nRUN x\nMAINTAINER me\n", "build/Dockerfile").findings
    assert (f.rule, f.file, f.line, f.end_line, f.col) == ("MaintainerDeprecated", "build/Dockerfile", 3, 3, 1)
    assert f.url == "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/"
    assert f.description.startswith("The MAINTAINER instruction is deprecated")


def test_undefined_var_scopes():
    text = "FROM alpine AS base\nARG foo=Dockerfile\nFROM base\nCOPY $foo .\nFROM alpine\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n"
    assert of("UndefinedVar", text) == [(6, "Usage of undefined variable '$foo'")]
    suggest = "FROM alpine\nARG DIR_ASSETS=assets/\nCOPY $DIR_ASSET .\n"
    assert of("UndefinedVar", suggest) == [(3, "Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?)")]


def test_undefined_arg_in_from_suggests():
    text = "FROM --platform=$BULIDPLATFORM scratch\n"
    assert of("UndefinedArgInFrom", text) == [(1, "FROM argument 'BULIDPLATFORM' is not declared (did you mean BUILDPLATFORM?)")]


def test_multiple_instructions_reported_at_the_ignored_one():
    text = 'FROM scratch\nCMD ["/a"]\nCOPY <<EOF /a.txt\nhi\nEOF\nCMD ["/b"]\nFROM scratch\nCMD ["/c"]\n'
    assert [line for line, _ in of("MultipleInstructionsDisallowed", text)] == [2]


def test_copy_ignored_file_respects_exclusions_and_root():
    assert of("CopyIgnoredFile", "FROM scratch\nCOPY ./Dockerfile .\n", ignored=matcher(["**", "!Dockerfile"])) == []
    assert of("CopyIgnoredFile", "FROM scratch\nCOPY . .\n", ignored=matcher([".*"])) == []
    assert of("CopyIgnoredFile", "FROM scratch\nCOPY . .\n", ignored=matcher(["*"])) == [
        (2, 'Attempting to Copy file "." that is excluded by .dockerignore')
    ]


def test_experimental_rule_is_off_by_default():
    assert of("InvalidDefinitionDescription", "# nope\nARG VERSION=1\nFROM scratch\n") == []


# --- configuration ---------------------------------------------------------------------------

CASING = "FROM scratch as base\ncopy Dockerfile .\n"


def test_directive_skips_rules():
    assert [r for _, r, _ in found("#check=skip=ConsistentInstructionCasing\n" + CASING)] == ["FromAsCasing"]
    assert found("#check=skip=ConsistentInstructionCasing,FromAsCasing\n" + CASING) == []
    result = lint(("# check=skip=all\n" + CASING).encode())
    assert result.findings == () and result.config.skip_all and not result.failed


def test_directive_error_true():
    result = lint(("# check=error=true\n" + CASING).encode())
    assert result.config.error and result.failed and len(result.findings) == 2
    assert "2 errors found" in render_text(result, "Dockerfile")
    sarif = json.loads(render_sarif(result, "Dockerfile"))
    assert {r["level"] for r in sarif["runs"][0]["results"]} == {"error"}


def test_directive_experimental_and_local_comments():
    text = "# check=experimental=InvalidDefinitionDescription\n# bar the bar\nARG foo=bar\nFROM scratch\n" \
           "# check=skip=MaintainerDeprecated // allowed here\nMAINTAINER me\nMAINTAINER you\n"
    assert [(line, rule) for line, rule, _ in found(text)] == [
        (3, "InvalidDefinitionDescription"), (7, "MaintainerDeprecated")]


def test_config_parsing_and_merge():
    cfg = config_from_directive(b"# syntax=docker/dockerfile:1\n# check=skip=A, B;error=true\nFROM x\n")
    assert cfg == CheckConfig(skip=frozenset({"A", "B"}), error=True)
    assert config_from_directive(b"FROM x\n# check=skip=all\n") == CheckConfig()
    merged = merge(cfg, ["C,D"], None)
    assert merged.skip == {"A", "B", "C", "D"} and merged.error
    assert merge(cfg, ["all"], False) == CheckConfig(skip=cfg.skip, skip_all=True, error=False)
    with pytest.raises(DockerfileError, match="invalid check option"):
        config_from_directive(b"# check=bogus=1\nFROM x\n")
    bad = lint(b"# check=bogus=1\nFROM x\nMAINTAINER me\n")
    assert bad.error is not None and bad.error.line == 1 and [f.rule for f in bad.findings] == ["MaintainerDeprecated"]


def test_config_parameter_replaces_directive():
    result = lint(("# check=skip=all\n" + CASING).encode(), config=merge(CheckConfig(), ["ConsistentInstructionCasing"]))
    assert [f.rule for f in result.findings] == ["FromAsCasing"]
    via_build_arg = lint(("#check=error=true\n" + CASING).encode(), build_args={"BUILDKIT_DOCKERFILE_CHECK": "skip=all"})
    assert via_build_arg.findings == () and not via_build_arg.config.error


# --- reports ---------------------------------------------------------------------------------


def test_text_report():
    result = lint(CASING.encode())
    assert render_text(result, "Dockerfile") == (
        "Dockerfile:1: FromAsCasing: 'as' and 'FROM' keywords' casing do not match\n"
        "Dockerfile:2: ConsistentInstructionCasing: Command 'copy' should match the case of the command majority (uppercase)\n"
        "2 warnings found (use --format json for details)\n"
    )
    assert render_text(lint(b"FROM scratch\n"), "Dockerfile") == "no problems found\n"


def test_parse_error_is_reported_not_raised():
    result = lint(b"FROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n")
    assert result.error is not None and result.error.line == 3 and "BADCMD" in str(result.error)
    assert [(f.line, f.rule) for f in result.findings] == [(1, "StageNameCasing"), (2, "MaintainerDeprecated")]
    assert render_text(result, "Dockerfile").startswith("error: Dockerfile:3:")
    assert lint(b"").error is not None
    assert lint(b"\xff\xfe\x00garbage").error is not None


def test_json_report():
    doc = json.loads(render_json(lint(CASING.encode())))
    assert doc["error"] is None
    first = doc["warnings"][0]
    assert first == {
        "ruleName": "FromAsCasing",
        "description": "The 'as' keyword should match the case of the 'from' keyword",
        "url": "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
        "detail": "'as' and 'FROM' keywords' casing do not match",
        "level": "warning",
        "location": {"file": "Dockerfile", "line": 1, "endLine": 1, "column": 1},
    }


def test_sarif_report_shape():
    doc = json.loads(render_sarif(lint(CASING.encode()), "app/Dockerfile"))
    assert doc["version"] == "2.1.0" and "sarif-2.1.0" in doc["$schema"]
    run = doc["runs"][0]
    assert run["tool"]["driver"]["name"] == "buildpy"
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert set(rules) == {"FromAsCasing", "ConsistentInstructionCasing"}
    assert rules["FromAsCasing"]["helpUri"] == "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
    assert rules["FromAsCasing"]["shortDescription"]["text"]
    for res in run["results"]:
        assert res["level"] == "warning" and res["message"]["text"]
        assert run["tool"]["driver"]["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"] == "app/Dockerfile"
        assert set(loc["region"]) == {"startLine", "endLine", "startColumn"}
        assert loc["region"]["startLine"] >= 1 and loc["region"]["startColumn"] >= 1
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in run["results"]] == [1, 2]


# --- BuildKit's parser test files ------------------------------------------------------------

FILES = sorted(p.name for p in TESTFILES.iterdir()) if TESTFILES.is_dir() else []


@pytest.mark.parametrize("name", FILES)
def test_parser_testfiles_lint_without_crash(name):
    source = (TESTFILES / name / "Dockerfile").read_bytes()
    result = lint(source, name)
    assert result.error is None or "internal error" not in result.error.message
    assert list(result.findings) == sorted(result.findings, key=lambda f: f.line)
    for render in (render_text, render_sarif):
        assert render(result, name)
    json.loads(render_json(result))


def test_parser_testfiles_are_there():
    assert len(FILES) >= 30


EXACT = {
    "mail": [(16, "JSONArgsRecommended")],
    "brimstone-consuldock": [(4, "LegacyKeyValueFormat"), (8, "LegacyKeyValueFormat"), (26, "NoEmptyContinuation")],
    "lk4d4-the-edge-case-generator": [
        (3, "LegacyKeyValueFormat"), (24, "LegacyKeyValueFormat"), (25, "LegacyKeyValueFormat"),
        (28, "MultipleInstructionsDisallowed"), (29, "JSONArgsRecommended"), (29, "MultipleInstructionsDisallowed"),
        (30, "JSONArgsRecommended"), (30, "MultipleInstructionsDisallowed"), (31, "JSONArgsRecommended"),
        (31, "MultipleInstructionsDisallowed"), (32, "JSONArgsRecommended"),
    ],
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_parser_testfile_findings_exactly(name):
    result = lint((TESTFILES / name / "Dockerfile").read_bytes(), name)
    assert result.error is None
    assert [(f.line, f.rule) for f in result.findings] == EXACT[name]
