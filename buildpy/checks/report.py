"""Findings as text, JSON or SARIF 2.1.0 (for CI code scanning).

Text: one line per finding, `Dockerfile:LINE: RuleName: message`, then a summary
(`2 warnings found (use --format json for details)`, `no problems found`); under `error=true`
the findings are errors. A Dockerfile error comes first as `error: FILE:LINE:COL: message`.
"""

from __future__ import annotations

import json

from buildpy.checks.findings import Finding, LintResult
from buildpy.checks.rules import BY_NAME, RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"


def _level(result: LintResult) -> str:
    return "error" if result.config.error else "warning"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def render_text(result: LintResult, name: str | None = None) -> str:
    lines = []
    if result.error is not None:
        lines.append(f"error: {result.error}")
    for f in result.findings:
        lines.append(f"{name or f.file}:{f.line}: {f.rule}: {f.message}")
    if result.findings:
        lines.append(f"{_count(len(result.findings), _level(result))} found (use --format json for details)")
    elif result.error is None:
        lines.append("no problems found")
    return "\n".join(lines) + "\n"


def _finding_json(f: Finding, level: str) -> dict:
    return {
        "ruleName": f.rule,
        "description": f.description,
        "url": f.url,
        "detail": f.message,
        "level": level,
        "location": {"file": f.file, "line": f.line, "endLine": f.end_line, "column": f.col},
    }


def render_json(result: LintResult) -> str:
    """{"warnings": [{ruleName, description, url, detail, level, location}], "error": null|{…}}
    (field names as BuildKit's lint subrequest prints them)."""
    level = _level(result)
    error = None
    if result.error is not None:
        e = result.error
        error = {"message": e.message, "file": e.file, "line": e.line, "column": e.col}
    doc = {"warnings": [_finding_json(f, level) for f in result.findings], "error": error}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render_sarif(result: LintResult, name: str | None = None) -> str:
    level = _level(result)
    used = {f.rule for f in result.findings}
    rules = []
    index: dict[str, int] = {}
    for rule in RULES:
        if rule.name not in used:
            continue
        index[rule.name] = len(rules)
        entry: dict = {
            "id": rule.name,
            "name": rule.name,
            "shortDescription": {"text": rule.description},
            "defaultConfiguration": {"level": level},
        }
        if rule.url:
            entry["helpUri"] = rule.url
        rules.append(entry)
    results = []
    for f in result.findings:
        region = {"startLine": max(f.line, 1), "endLine": max(f.end_line, f.line, 1), "startColumn": max(f.col, 1)}
        results.append(
            {
                "ruleId": f.rule,
                "ruleIndex": index[f.rule],
                "level": level,
                "message": {"text": f.message},
                "locations": [
                    {"physicalLocation": {"artifactLocation": {"uri": name or f.file}, "region": region}}
                ],
            }
        )
    run: dict = {
        "tool": {"driver": {"name": "buildpy", "informationUri": "https://docs.docker.com/go/build-checks/",
                            "rules": rules}},
        "results": results,
    }
    if result.error is not None:
        e = result.error
        run["invocations"] = [
            {
                "executionSuccessful": False,
                "toolExecutionNotifications": [
                    {
                        "level": "error",
                        "message": {"text": e.message},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": {"uri": name or e.file},
                                    "region": {"startLine": max(e.line, 1)},
                                }
                            }
                        ],
                    }
                ],
            }
        ]
    doc = {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


__all__ = ["render_text", "render_json", "render_sarif", "BY_NAME"]
