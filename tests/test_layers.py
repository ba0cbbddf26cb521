"""The engine's layering contract, checked from the source (no import needed).

``vscene_engine`` is laid out as the pipeline, lowest layer first (see DESIGN.md). A module may import from its own
layer or a lower one, never a higher one, and no two modules may import each other, directly or around a cycle.
Imports inside functions count too: a lazy import is still a dependency. The test reads every ``.py`` file of the
package with :mod:`ast`, resolves relative imports to module names and checks both rules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "vscene_engine"

# lowest first; a package's subpackages (prior/mvsplat) belong to its layer
LAYERS = ["core", "io", "render", "views", "prior", "recon", "video", "policy", "compose", "train", "pipeline",
          "tools"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Engine modules ``path`` imports (absolute dotted names), lazy imports included."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vscene_engine":
                continue
            submodules = {f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")}
            found.update(submodules or {target})  # `from . import x` names modules, not the package
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "vscene_engine")
    return {m for m in found if m != name}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (ENGINE / rel).with_suffix(".py").is_file() or (ENGINE / rel / "__init__.py").is_file()


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None  # the package itself, __main__: the entry points above everything
    return LAYERS.index(parts[1])


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(ENGINE.rglob("*.py")):
        graph[_module_name(path)] = {m for m in _imports(path) if _exists(m)}
    return graph


def test_every_module_belongs_to_a_layer():
    unknown = sorted(m for m in _graph() if m.count(".") >= 1 and m.split(".")[1] not in LAYERS + ["__main__"])
    assert not unknown, f"modules outside the layer map (add them to a layer folder): {unknown}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for module, deps in _graph().items():
        own = _layer(module)
        if own is None:
            continue
        for dep in sorted(deps):
            other = _layer(dep)
            if other is not None and other > own:
                bad.append(f"{module} ({LAYERS[own]}) imports {dep} ({LAYERS[other]})")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle of concern; drop package -> child edges
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_contract_sees_real_edges():
    """The checker must find known dependencies, or the two tests above pass vacuously."""
    graph = _graph()
    assert "vscene_engine.core.gaussians" in graph["vscene_engine.render.projection"]
    assert "vscene_engine.video.schedule" in graph["vscene_engine.video.leap"]
    assert sum(len(d) for d in graph.values()) > 50


@pytest.mark.parametrize("layer", [name for name in LAYERS if name != "pipeline"])
def test_layer_folders_exist(layer):
    assert (ENGINE / layer / "__init__.py").is_file()
