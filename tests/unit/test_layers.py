"""The import rules of the layout: the pure modules load no gevent, and the client library loads
nothing from the node (service) or the load generator (bench). Each check runs in a fresh
interpreter, since this one has imported everything already."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT_MODULES = sorted(f"client.{path.stem}" for path in (REPO / "client").glob("*.py") if path.stem != "__main__")


def run_python(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["service.config", "client.protocol", "client.ring", "client.address"])
def test_a_pure_module_imports_no_gevent(module: str) -> None:
    run_python(f"import {module}, sys; assert 'gevent' not in sys.modules, sorted(sys.modules)")


def test_the_client_library_imports_nothing_from_service_or_bench() -> None:
    imports = "; ".join(f"import {module}" for module in CLIENT_MODULES)
    run_python(
        f"{imports}; import sys; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('service', 'bench')]; "
        "assert not loaded, loaded"
    )
