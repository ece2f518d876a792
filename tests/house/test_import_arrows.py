"""The house's arrows point one way: a test that fails when an import points back up.

Read from the source with ``ast`` (every import, also those inside functions), so that a
circle hidden behind a lazy import counts as one too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dsqnet", "catalog", "flows")

# Within flows/, each room may import only the rooms listed after it here (and itself).
# The flows themselves (flows/*.py) sit above every room, and the command line above them.
FLOWS_ROOMS = ["cli", "<flows>", "monitoring", "scoring", "params", "outputs", "blocks", "workers", "models",
               "runtime", "files"]
FORBIDDEN = {
    "dsqnet": ("flows", "catalog", "prefect", "xarray", "rioxarray", "zarr", "geopandas", "dask"),
    "catalog": ("flows", "dsqnet", "torch", "prefect"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, ``from pkg import mod`` as ``pkg.mod``."""
    tree = ast.parse(path.read_text())
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    sources = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in sources}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "flows" or len(parts) == 1:
        return None
    return parts[1] if (ROOT / "flows" / parts[1]).is_dir() else "<flows>"


def test_no_import_circles():
    graph = project_graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_model_and_catalog_stay_free_of_what_they_must_not_know(package):
    wrong = []
    for path in (ROOT / package).rglob("*.py"):
        for target in imports_of(path):
            if target.split(".")[0] in FORBIDDEN[package]:
                wrong.append(f"{module_name(path)} imports {target}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_rooms_of_flows_import_only_downwards():
    rank = {room: i for i, room in enumerate(FLOWS_ROOMS)}
    upward = []
    for module, targets in project_graph().items():
        here = room_of(module)
        if here is None:
            continue
        assert here in rank, f"flows/{here}/ is a room this test does not know: add it to FLOWS_ROOMS"
        for target in targets:
            there = room_of(target)
            if there is not None and there != here and rank[there] < rank[here]:
                upward.append(f"{module} ({here}) imports {target} ({there})")
    assert not upward, "imports pointing back up:\n" + "\n".join(sorted(upward))


def test_the_test_sees_a_circle(tmp_path, monkeypatch):
    """The graph reader itself: a made-up package whose two modules import each other is a circle."""
    (tmp_path / "dsqnet").mkdir()
    (tmp_path / "dsqnet" / "__init__.py").write_text("")
    (tmp_path / "dsqnet" / "a.py").write_text("from .b import x\n")
    (tmp_path / "dsqnet" / "b.py").write_text("def f():\n    from dsqnet.a import y\n")
    for name in ("catalog", "flows"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="dsqnet.a -> dsqnet.b -> dsqnet.a"):
        test_no_import_circles()
