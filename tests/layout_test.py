"""The package's wings import downwards only, and no module outgrows one concept."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "hificodec_jax"

# Lower rank = lower floor; a module may import its own wing and any wing below it.
RANK = {
    "audio": 0,
    "models": 1,
    "factory": 2,
    "config_defaults": 2,
    "presets": 2,
    "data": 3,
    "codec": 4,
    "training": 5,
    "cli": 6,
    "main": 6,
    "__init__": 6,
}


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "hificodec_jax":
                found |= {f"hificodec_jax.{a.name}" for a in node.names}
            elif node.module.startswith("hificodec_jax."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hificodec_jax.")}
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def test_every_module_belongs_to_a_known_wing():
    unknown = {_wing(m) for m, _ in _modules() if m != "hificodec_jax"} - set(RANK)
    assert not unknown, f"modules outside the known wings: {sorted(unknown)}"


def test_wings_import_downwards():
    upward = []
    for module, path in _modules():
        here = RANK[_wing(module)] if module != "hificodec_jax" else RANK["__init__"]
        for imported in _imports(path):
            wing = _wing(imported)
            if wing in RANK and RANK[wing] > here:
                upward.append(f"{module} -> {imported}")
    assert not upward, "imports that go up a floor:\n" + "\n".join(upward)


def test_models_never_import_training_data_or_tools():
    for module, path in _modules():
        if _wing(module) == "models":
            bad = {i for i in _imports(path) if _wing(i) not in ("models", "audio")}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_no_module_over_400_lines():
    long = {m: n for m, p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
