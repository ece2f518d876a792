"""Every third-party package the code imports is declared in pyproject.toml (a fresh install has it)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN = {"dsqnet", "catalog", "flows", "tests", "bench"}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def imported(folders: tuple[str, ...]) -> set[str]:
    found = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    found.add(node.module.split(".")[0])
    return {name for name in found if name not in OWN and name not in sys.stdlib_module_names}


def test_every_imported_package_is_declared():
    distributions = packages_distributions()
    names = declared()
    undeclared = []
    for module in sorted(imported(("dsqnet", "catalog", "flows", "tests"))):
        providers = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not providers & names:
            undeclared.append(f"{module} (from {', '.join(sorted(providers))})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)
