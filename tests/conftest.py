"""Test-wide fixtures. Shared helpers live in testutils.py (a unique module name, so that the
conftest.py of a sub-folder never shadows them)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded-image caches go to a per-session temp folder, never the user's home.
    monkeypatch.setenv("SSKT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sskt-cache"))
