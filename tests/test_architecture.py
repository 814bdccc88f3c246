"""The house rules that keep sskt easy to change: imports flow one way (the layer contract in
pyproject.toml, checked by import-linter) and no module does two jobs (about 400 lines at most)."""
from pathlib import Path

import pytest

from testutils import ROOT

MAX_MODULE_LINES = 420


def test_imports_flow_one_way_through_the_layers():
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extra: pip install -e '.[test]'")
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0, (
        "a module imports a layer above its own (or a sibling it must not): see the lint-imports report above "
        "and the layer list in pyproject.toml / docs/ARCHITECTURE.md")


def test_no_module_is_doing_two_jobs():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in (ROOT / "src" / "sskt").rglob("*.py")}
    big = {str(p): n for p, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by reason to change): {big}"


def test_the_contract_names_every_subpackage():
    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {f"sskt.{p.stem if p.is_file() else p.name}" for p in (ROOT / "src" / "sskt").iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert packages <= named, f"add {sorted(packages - named)} to a layer in pyproject.toml ([tool.importlinter])"
