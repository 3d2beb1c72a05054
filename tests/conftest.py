"""Shared test helpers: where the conformance data lives (beside the repo, never copied in)."""

from __future__ import annotations

from pathlib import Path

import pytest

# the registry fixtures (registry, auth_registry, tls_registry, token_registry) for every test module
pytest_plugins = ["tests.registries", "tests.tokenauth"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"


def conformance_dir(*parts: str) -> Path:
    path = CONFORMANCE.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"conformance data missing: {path} (../shared must sit beside the repo)")
    return path
