"""Imports run one way: commands -> app -> {cluster, correlate -> capture} -> decode -> model, and
render imports only model (checked in a fresh interpreter: what importing a module loads)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("module", "allowed"), [
    ("tracer.model", ()), ("tracer.render.path", ("tracer.model",)),
    ("tracer.cluster.discover", ("tracer.model", "tracer.cluster", "tracer.errors")),
    ("tracer.cluster.filters", ("tracer.model", "tracer.cluster", "tracer.errors")),
    ("tracer.app.path", ("tracer.app", "tracer.model", "tracer.cluster", "tracer.errors")),
])
def test_imports_run_one_way(module: str, allowed: tuple[str, ...]) -> None:
    """The model imports nothing of tracer's, the path view only the model, the cluster layer no
    app, the path use case no command and no view."""
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('tracer.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    stray = [m for m in loaded if not m.startswith((module, *allowed)) and not module.startswith(m + ".")]
    assert not stray, f"{module} imports {stray}"
