"""The package's layers, read from its source: a lower layer never imports a higher one, no module imports
itself round a cycle (imports inside functions count too), serving loads no training code, and Ray stays in
its own module."""
import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "fer_kaggle"
# Bottom to top, as the data flows; a module may import its own layer's modules and those below.
LAYERS = ["core", "data", "models", "training", "blend", "run", "serve", "student", "analysis", "bench"]
TOP = len(LAYERS)  # cli.py, __main__.py and the `python -m fer_kaggle.<command>` files


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py") if "demo_data" not in path.parts}


def _imports(name):
    """The fer_kaggle modules that `name` imports anywhere in its source, and the names it takes from the root."""
    found, from_root = set(), set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fer_kaggle."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .` is the module's own package, each further dot one up
                parents = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base] if base else parents)
            if base != "fer_kaggle" and not base.startswith("fer_kaggle."):
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                if child in MODULES:
                    found.add(child)
                elif base == "fer_kaggle":
                    from_root.add(alias.name)
                else:
                    found.add(base)
    return found - {"fer_kaggle"}, from_root


def _layer(name):
    parts = name.split(".")
    if parts[-1] == "__main__":
        return TOP  # `python -m fer_kaggle.bench`: an entry point, like the command files
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


GRAPH = {name: _imports(name)[0] for name in MODULES}


def test_every_module_is_in_a_layer_or_is_a_command_at_the_top():
    entry_points = ["fer_kaggle.__main__", "fer_kaggle.distill", "fer_kaggle.ensemble", "fer_kaggle.export",
                    "fer_kaggle.predict", "fer_kaggle.report"]
    top = sorted(name for name in MODULES if _layer(name) == TOP)
    assert top == sorted(["fer_kaggle", "fer_kaggle._startup", "fer_kaggle.cli", "fer_kaggle.bench.__main__",
                          *entry_points])
    for name in [*entry_points, "fer_kaggle.bench.__main__"]:
        assert GRAPH[name] == {"fer_kaggle.cli"}, f"{name} only hands its arguments to the command line"


def test_a_lower_layer_never_imports_a_higher_one():
    upward = [f"{name} (layer {LAYERS[_layer(name)]}) imports {target}"
              for name, targets in GRAPH.items() if _layer(name) < TOP
              for target in targets if _layer(target) > _layer(name)]
    assert not upward


def test_layers_take_only_the_version_from_the_package_root():
    for name in MODULES:
        if _layer(name) < TOP:
            assert _imports(name)[1] <= {"__version__"}, name


def test_no_module_imports_itself_round_a_cycle():
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert not cycles


@pytest.mark.slow
def test_serving_loads_no_training_or_run_code():
    """Real imports in a fresh interpreter: what a photo or ONNX user's process holds."""
    probe = ("import sys; import fer_kaggle.serve.predict, fer_kaggle.serve.export, fer_kaggle.serve.inference; "
             "print(' '.join(m for m in sys.modules if m.startswith(('fer_kaggle.training', 'fer_kaggle.run'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.split() == []


def test_ray_is_imported_only_by_its_own_module():
    users = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                users.append(name)
    assert set(users) == {"fer_kaggle.run.ray_executor"}
