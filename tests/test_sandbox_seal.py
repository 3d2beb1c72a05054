"""`init.seal_imports`: a process standing in a container's root imports nothing from files (the
image's files on sys.path would otherwise run with our privileges)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[1])


def test_after_sealing_only_loaded_and_builtin_modules_import(tmp_path: Path) -> None:
    planted = tmp_path / "plantedmod.py"
    planted.write_text("import sys; sys.exit('planted code ran')\n")
    code = f"""
import sys
sys.path.insert(0, {REPO!r}); sys.path.insert(0, {str(tmp_path)!r})
import json
from buildpy.sandbox.init import seal_imports
seal_imports()
import json, _signal, marshal       # loaded or built in: fine
json.dumps([1])
for name in ("plantedmod", "csv"):
    try:
        __import__(name)
    except ImportError:
        print("refused", name)
"""
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["refused plantedmod", "refused csv"]
