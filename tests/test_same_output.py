"""Every view, JSON document and merged pcapng of the samples in pcaps/ is what it was: the
sums bench/same_output.py takes of them, against tests/golden/outputs.json. A change that means
to alter an output regenerates the file with

    TRACER_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_same_output.py

and says so in its commit; a refactoring never does.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "outputs.json"


def _same_output():
    spec = importlib.util.spec_from_file_location("same_output", ROOT / "bench" / "same_output.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_output_of_the_samples_is_unchanged():
    so = _same_output()
    got = so.collect(bench=False, samples_only=True)
    assert len(got) >= 56  # (eight samples, seven runs each: none may go missing unnoticed)
    if os.environ.get("TRACER_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert so.compare(want, got) == []
