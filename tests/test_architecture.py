"""The package's folders show its architecture, and imports point one way between them.

Layers, lowest first: core (settings, HTML, progress) <- data <- training <- serving <- cluster
<- stages <- components <- pipelines <- the cli registry. A module may import from its own
folder and from the layers below it, never from a layer above, also not lazily inside a function:
that is how the old package-level loop (invmon -> pipelines -> components -> invmon) hid.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    "invmon.core",
    "invmon.data",
    "invmon.training",
    "invmon.serving",
    "invmon.cluster",
    "invmon.stages",
    "invmon.components",
    "invmon.pipelines",
    "invmon",
]
FOLDERS = {name: ROOT / "src" / Path(*name.split(".")) for name in LAYERS}
FOLDERS["invmon.components"] = ROOT / "components"
FOLDERS["invmon.pipelines"] = ROOT / "pipelines"


def _layer(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not the project's)."""
    for name in LAYERS[:-1]:
        if module == name or module.startswith(name + "."):
            return name
    return "invmon" if module == "invmon" or module.startswith("invmon.") else None


def _modules():
    for layer, folder in FOLDERS.items():
        pattern = "*.py" if layer == "invmon" else "**/*.py"
        for path in sorted(folder.glob(pattern)):
            yield layer, path


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at module level or inside functions, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from invmon import stages` imports the stages package
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_every_import_points_down_the_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for layer, path in _modules():
        for line, module in _imports(path):
            target = _layer(module)
            if target is None or target == layer or module == "invmon":
                continue
            if rank[target] > rank[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({target})")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_has_its_folder(layer):
    assert FOLDERS[layer].is_dir()


def test_no_module_is_over_500_lines():
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for _, path in _modules()
        if (n := len(path.read_text().splitlines())) > 500
    ]
    assert not long, long


def _module_name(layer: str, path: Path) -> str:
    parts = [p for p in path.relative_to(FOLDERS[layer]).with_suffix("").parts if p != "__init__"]
    return ".".join([layer, *parts])


def _import_graph() -> dict[str, set[str]]:
    """Which project modules each project module imports, lazily inside functions too."""
    modules = {_module_name(layer, path): path for layer, path in _modules()}
    return {
        name: {target for _, target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a loop (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_even_lazily():
    """A loop hidden in function-level imports is still a loop: the modules cannot be read,
    tested or moved apart (it was training.loop <-> checkpoint <-> quantize, and
    pipelines.compile <-> inventory_pipeline)."""
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_finds_a_lazy_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_function_is_over_80_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines"
        for _, path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := node.end_lineno - node.lineno + 1) > 80
    ]
    assert not long, long
