"""The package's modules import downwards only, without a circle, and no module outgrows one
concept. The PyTorch interop wing (``reference/``) is imported only by the CLI, the Hub module
(which converts downloaded reference checkpoints) and the trainer's resume path."""

from __future__ import annotations

import ast
import pathlib

import hificodec_jax

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "hificodec_jax"

# Lower rank = lower floor; a module may import its own floor and any floor below it. Keys are
# wings (a folder) or modules; the most specific key names a module's floor.
RANK = {
    "platforms": 0,  # which backend JAX starts (imports only jax)
    "audio": 0,
    "models": 1,
    "config_defaults": 2,
    "presets": 3,
    "factory": 4,
    "model_dir": 5,
    "reference.pth": 6,
    "reference.layout": 6,
    "reference.convert": 7,
    "hub": 8,
    "loading": 9,
    "data": 10,
    "inference": 11,
    "codec": 12,  # deprecated aliases of inference/ and reference/ modules (one release)
    "training": 13,
    "reference": 14,  # training_import, resume, parity: a reference run into our train state
    "training.loop": 15,  # the trainer, whose resume path imports reference.resume
    "tokens": 16,  # tokenizing corpora for codec language models
    "aot": 16,  # compiling the trainer's and the codec's programs for TPU/GPU targets
    "cli": 17,
    "main": 17,
    "__init__": 18,
}
INTEROP_IMPORTERS = {"cli", "hub", "training.loop", "reference", "codec"}  # codec: 0.2 aliases


def _key(module: str) -> str:
    """The most specific RANK key of ``hificodec_jax.x.y``."""
    parts = module.split(".")[1:] or ["__init__"]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    return parts[0]


def _is_main_block(node) -> bool:
    """``if __name__ == "__main__":`` (an entry-point alias, not a library dependency)."""
    t = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(t, ast.Compare)
        and isinstance(t.left, ast.Name)
        and t.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators)
    )


def _imports_outside_main(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    main_nodes = {id(n) for node in ast.walk(tree) if _is_main_block(node) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in main_nodes:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "hificodec_jax":
                # ``from package import module`` imports the module (and the package)
                subs = {f"{node.module}.{a.name}" for a in node.names}
                out |= {n for n in subs if _exists(n)}
                if node.module != "hificodec_jax" and not all(_exists(n) for n in subs):
                    out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("hificodec_jax.")}
    return out


def _exists(module: str) -> bool:
    rel = pathlib.Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def test_every_module_belongs_to_a_known_floor():
    unknown = {_key(m) for m, _ in _modules()} - set(RANK)
    assert not unknown, f"modules outside the known floors: {sorted(unknown)}"


def test_modules_import_downwards_only():
    upward = []
    for module, path in _modules():
        here = RANK[_key(module)]
        for imported in _imports_outside_main(path):
            if RANK.get(_key(imported), -1) > here:
                upward.append(f"{module} -> {imported}")
    assert not upward, "imports that go up a floor:\n" + "\n".join(upward)


def test_no_import_circle_even_through_function_level_imports():
    graph = {m: {i for i in _imports_outside_main(p) if i != m} for m, p in _modules()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_the_pytorch_interop_wing_has_few_importers():
    importers = set()
    for module, path in _modules():
        if any(_key(i).startswith("reference") for i in _imports_outside_main(path)):
            importers.add(
                _key(module).split(".")[0] if _key(module) != "training.loop" else "training.loop"
            )
    assert importers <= INTEROP_IMPORTERS, importers


def test_models_never_import_training_data_or_tools():
    for module, path in _modules():
        if _key(module) == "models":
            bad = {i for i in _imports_outside_main(path) if _key(i) not in ("models", "audio")}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_no_module_over_400_lines():
    long = {m: n for m, p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


def test_dir_lists_the_public_api_and_every_name_resolves():
    names = dir(hificodec_jax)
    assert {"load", "Model", "encode_batch", "chunked_encode", "read_hfc", "write_hfc"} <= set(
        names
    )
    assert names == sorted(hificodec_jax.__all__)
    for name in hificodec_jax.__all__:
        assert getattr(hificodec_jax, name) is not None, name


def test_no_benchmark_or_test_file_shadows_the_standard_library():
    # A script's folder comes first on sys.path: benchmarks/tokenize.py broke `import inspect`.
    import sys

    root = PACKAGE.parent
    names = {p.stem for folder in ("benchmarks", "tests") for p in (root / folder).glob("*.py")}
    assert not names & set(sys.stdlib_module_names)
