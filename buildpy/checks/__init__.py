"""Build checks (lint rules) over the front end's instructions. May import: grammar.

- `rules.py` — the rule table (name, description, URL) and BuildKit's message for each rule.
- `config.py` — `CheckConfig`, the `# check=` directive, per-instruction `# check=` comments,
  `merge` with the command line.
- `findings.py` — `Finding`, `LintResult`.
- `lint.py` — `lint(source, name, ...)`: parse and run every enabled rule; never raises.
- `platform.py` — platform strings as containerd reads them.
- `report.py` — text, JSON and SARIF 2.1.0 output.
"""
