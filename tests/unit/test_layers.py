"""The import rules of the layout: no import cycles, the pure modules load no gevent, and the client
library loads nothing from the node (service) or the load generator (bench). The import checks run
in a fresh interpreter, since this one has imported everything already."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("client", "service", "bench")
CLIENT_MODULES = sorted(f"client.{path.stem}" for path in (REPO / "client").glob("*.py") if path.stem != "__main__")


def run_python(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "module",
    [
        "service.config",
        "service.ownership",
        "service.transfer",
        "service.storage_health",
        "service.store_flags",
        "service.cluster_report",
        "service.admission",
        "service.connection_limits",
        "service.roles",
        "service.auth_throttle",
        "service.membership",
        "service.membership_store",
        "service.membership_view",
        "service.users",
        "client.scram",
        "client.protocol",
        "client.resp",
        "client.ring",
        "client.address",
    ],
)
def test_a_pure_module_imports_no_gevent(module: str) -> None:
    run_python(f"import {module}, sys; assert 'gevent' not in sys.modules, sorted(sys.modules)")


def test_the_client_library_imports_nothing_from_service_or_bench() -> None:
    imports = "; ".join(f"import {module}" for module in CLIENT_MODULES)
    run_python(
        f"{imports}; import sys; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('service', 'bench')]; "
        "assert not loaded, loaded"
    )


def import_graph() -> dict[str, set[str]]:
    """Each module of the three packages, and the modules of theirs it imports anywhere in its text
    (function-level imports included). Importing a submodule runs its package's ``__init__`` too."""
    paths = {
        (package if path.stem == "__init__" else f"{package}.{path.stem}"): path
        for package in PACKAGES
        for path in (REPO / package).glob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        imported |= {name.split(".")[0] for name in imported}
        graph[module] = {name for name in imported if name in paths and name != module}
    return graph


def test_there_are_no_import_cycles() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            assert imported not in path, f"import cycle: {' -> '.join([*path, imported])}"
            if imported not in done:
                visit(imported, [*path, imported])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
