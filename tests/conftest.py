"""Test-wide fixtures. Shared helpers live in testutils.py (a unique module name, so that the
conftest.py of a sub-folder never shadows them).

The tests mirror src/sskt/: those of src/sskt/<package>/<module>.py are in tests/<package>/, those of
a top-level module (config, losses, metrics) and the architecture rules here. The folders are not
packages (no __init__.py), so a test file's name must be unique across all of tests/."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded-image caches go to a per-session temp folder, never the user's home.
    monkeypatch.setenv("SSKT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sskt-cache"))
