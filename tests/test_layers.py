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
    ("tracer.decode", ()),
    ("tracer.capture.reader", ("tracer.capture", "tracer.decode", "tracer.errors")),
    ("tracer.correlate.engine", ("tracer.correlate", "tracer.capture", "tracer.decode", "tracer.model", "tracer.errors")),
    ("tracer.correlate.describe", ("tracer.correlate", "tracer.capture", "tracer.decode", "tracer.model", "tracer.errors")),
    ("tracer.app.analyze", ("tracer.app", "tracer.correlate", "tracer.capture", "tracer.decode", "tracer.model",
                            "tracer.errors")),
    ("tracer.app.follow", ("tracer.app", "tracer.cluster", "tracer.model", "tracer.errors")),
    ("tracer.app.watch", ("tracer.app", "tracer.cluster", "tracer.correlate", "tracer.capture", "tracer.decode",
                          "tracer.model", "tracer.errors")),
    *((f"tracer.render.{m}", ("tracer.render", "tracer.model", "tracer.errors"))
      for m in ("analysis", "hops", "summary", "text", "live", "header", "path", "progress", "jsondoc", "pcapng",
                "outputs")),
    ("tracer.model.analysis", ("tracer.model",)),
    ("tracer.app.lab", ("tracer.app", "tracer.cluster", "tracer.model", "tracer.errors")),
    ("tracer.render.lab", ("tracer.render", "tracer.model", "tracer.errors")),
    ("tracer.model.lab", ("tracer.model",)),
    ("tracer.model.agents", ("tracer.model",)),
    ("tracer.render.agents", ("tracer.render", "tracer.model", "tracer.errors")),
    ("tracer.app.agents", ("tracer.app", "tracer.cluster", "tracer.model", "tracer.errors")),
])
def test_imports_run_one_way(module: str, allowed: tuple[str, ...]) -> None:
    """The model imports nothing of tracer's, the views only the model, decoding nothing, the
    capture layer no correlation, the cluster layer no app, the use cases no command and no view."""
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('tracer.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    stray = [m for m in loaded if not m.startswith((module, *allowed)) and not module.startswith(m + ".")]
    assert not stray, f"{module} imports {stray}"
