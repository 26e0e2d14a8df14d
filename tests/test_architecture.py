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
