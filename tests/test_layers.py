"""The package's import structure: layers, no cycles, no private names across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "omniglue_sfm"

# lower layers never import higher ones; a module may import its own layer (without a cycle)
LAYERS = [
    # files, data, where work runs
    ("io", "hloc", "images", "runtime", "executors", "weights", "scenes", "masks", "official_runtime",
     "weights_fetch"),
    # plugins, presets (validated against the plugins), cameras, geometry (orientation: the turn of
    # a photo and its keypoint mapping)
    ("registry", "presets", "features", "guidance", "matchers", "cameras", "pnp", "orientation"),
    ("mapping",),  # mapper and outputs shared by both SfM pipelines
    ("extract", "pairs", "vlad", "match", "sfm", "colmap_sift", "summary", "viz"),  # stages, pictures
    ("reconstruct", "localize", "export", "triangulate", "weights_cli"),  # stages put together
    ("evaluate", "evaluate_pairs", "evaluate_localization", "compare", "training"),  # reports
    ("cli", "__main__"),  # the command line
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    base = module.split(".")
    is_package = MODULES[module].name == "__init__.py"
    keep = len(base) - node.level + (1 if is_package else 0)
    return ".".join([*base[:keep], *([node.module] if node.module else [])]).strip(".")


def _imports(module: str) -> tuple[set[str], list[str]]:
    """Package modules imported by ``module`` (anywhere in it) and its uses of private names."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    targets: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # local name -> package module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            source = _resolve(module, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}".strip(".")
                if sub in MODULES:
                    targets.add(sub)
                    aliases[alias.asname or alias.name] = sub
                else:
                    targets.add(source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"from {source} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("omniglue_sfm"):
            targets.add(node.module.removeprefix("omniglue_sfm").strip("."))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            private.append(f"{aliases[node.value.id]}.{node.attr}")
    targets.discard("")
    targets.discard(module)
    return targets, private


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    assert top in LAYER, f"module {module} has no layer in tests/test_layers.py"
    return LAYER[top]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_no_import_from_a_higher_layer(module):
    upward = [t for t in GRAPH[module][0] if t and _layer(t) > _layer(module)]
    assert not upward, f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_no_private_name_of_another_module(module):
    assert not GRAPH[module][1], f"{module} uses private names: {GRAPH[module][1]}"


def test_no_import_cycle():
    edges = {m: {t for t in GRAPH[m][0] if t in MODULES and t} for m in MODULES if m}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
