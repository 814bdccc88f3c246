"""The house rules that keep sskt easy to change: imports flow one way (the layer contract in
pyproject.toml, checked by import-linter), no module does two jobs (about 400 lines at most), and
docs/ARCHITECTURE.md stays true (its layout lists exactly the modules there are, and its example
method trains)."""
import math
import re
import sys
import types
from pathlib import Path

import pytest

from testutils import ROOT, tiny_config

MAX_MODULE_LINES = 420
PACKAGE = ROOT / "src" / "sskt"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
EXAMPLE_MARKER = "<!-- example-method:"


def test_imports_flow_one_way_through_the_layers():
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extra: pip install -e '.[test]'")
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0, (
        "a module imports a layer above its own (or a sibling it must not): see the lint-imports report above "
        "and the layer list in pyproject.toml / docs/ARCHITECTURE.md")


def test_no_module_is_doing_two_jobs():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    big = {str(p): n for p, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by reason to change): {big}"


def test_the_contract_names_every_subpackage():
    import tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {f"sskt.{p.stem if p.is_file() else p.name}" for p in PACKAGE.iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert packages <= named, f"add {sorted(packages - named)} to a layer in pyproject.toml ([tool.importlinter])"


# -- docs/ARCHITECTURE.md ------------------------------------------------------------------------


def documented_layout() -> dict[str, str]:
    """The modules the layout block of docs/ARCHITECTURE.md lists, as paths relative to src/sskt
    (a package's line stands for its ``__init__.py``), each with its line of purpose."""
    text = DOC.read_text()
    block = re.search(r"^## Layout\n.*?^```text\n(.*?)^```", text, re.S | re.M)
    assert block, f"{DOC}: no ```text block under '## Layout'"
    lines = block.group(1).splitlines()
    assert lines[0] == "src/sskt/", f"{DOC}: the layout starts with {lines[0]!r}, not 'src/sskt/'"
    listed: dict[str, str] = {}
    parents: list[str] = []  # the package folders above the current line
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip(" "))
        name, _, purpose = line.strip().partition(" ")
        assert indent % 2 == 0 and 1 <= indent // 2 <= len(parents) + 1, f"{DOC}: bad indentation: {line!r}"
        parents = parents[:indent // 2 - 1]
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
            path = "/".join([*parents, "__init__.py"])
        else:
            path = "/".join([*parents, name])
        assert path not in listed, f"{DOC}: {path} is listed twice"
        listed[path] = purpose.strip()
    return listed


def test_the_layout_in_the_docs_lists_every_module_and_nothing_else():
    listed = documented_layout()
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing, stale = sorted(actual - set(listed)), sorted(set(listed) - actual)
    assert not missing and not stale, (
        f"docs/ARCHITECTURE.md's layout is out of date: add {missing} (one line of purpose each), "
        f"drop {stale} (no such file)")
    assert all(listed.values()), f"modules without a line of purpose: {[p for p, s in listed.items() if not s]}"


def example_method_source() -> str:
    """The python block that follows the example-method marker in docs/ARCHITECTURE.md."""
    text = DOC.read_text()
    assert text.count(EXAMPLE_MARKER) == 1, f"{DOC}: expected one {EXAMPLE_MARKER!r} marker before the example"
    block = re.search(r"\A\s*[^\n]*-->\s*```python\n(.*?)^```", text.split(EXAMPLE_MARKER, 1)[1], re.S | re.M)
    assert block, f"{DOC}: the {EXAMPLE_MARKER!r} marker must be followed by a ```python block"
    return block.group(1)


def test_the_example_method_in_the_docs_trains_through_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The doc's example is a whole method file: executed as it stands (under a test-only name), it
    registers a method that ``fit`` trains for one epoch with finite losses and a finite test score."""
    from sskt.config import ExperimentConfig
    from sskt.engine.run import fit
    from sskt.methods import METHODS

    source = example_method_source()
    registered = re.findall(r'@METHODS\.register\("([^"]+)"\)', source)
    assert len(registered) == 1, f"the example must register one method, found {registered}"
    name = "docs-example-method"  # test-only: never a real method's name
    assert name not in METHODS
    source = source.replace(f'@METHODS.register("{registered[0]}")', f'@METHODS.register("{name}")')
    module = types.ModuleType("sskt_docs_example_method")
    with monkeypatch.context() as patch:
        # METHODS has no unregister: the example registers into a copy of the registry's table, and the
        # original (without it) is back when the block ends, so tests/methods/test_contract.py never sees it.
        patch.setattr(METHODS, "_items", dict(METHODS._items))
        patch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up there
        exec(compile(source, f"{DOC}:example-method", "exec"), module.__dict__)
        cls = METHODS.get(name)
        assert cls.name == name and cls.options_class is not None
        raw = tiny_config(tmp_path, method={"name": name}, train={"accelerator": "cpu"})
        result = fit(ExperimentConfig.from_dict(raw))
    assert name not in METHODS, "the test-only method outlived the test"
    assert result.history and all(math.isfinite(h["train_loss"]) for h in result.history), result.history
    assert math.isfinite(result.final) and 0.0 <= result.final <= 100.0, result.final
