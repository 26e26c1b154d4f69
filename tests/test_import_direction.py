"""Imports run one way, checked on the source: every import of every module of tracer, at the top,
inside functions and under TYPE_CHECKING, and every module named in a registry string
("tracer.render.jsondoc:show_json", cli's COMMANDS, the lab's BUILDERS): commands -> app ->
{cluster, correlate -> capture} -> decode -> model; render imports only model. tracer.errors
(the one exception tree) may be imported by all."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tracer"
MAY_IMPORT = {
    "model": {"model"},
    "decode": {"decode"},
    "capture": {"capture", "decode", "model"},
    "correlate": {"correlate", "capture", "decode", "model"},
    "cluster": {"cluster", "model"},
    "render": {"render", "model"},
    "app": {"app", "cluster", "correlate", "capture", "decode", "model"},
    "commands": {"commands", "app", "render", "model"},
}
EVERYONE = {"errors"}
MODULE_STRING = re.compile(r"^tracer(\.[a-z_]+)+(:[a-z_]+)?$")


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tracer" else None


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every tracer module `path` imports or names as a module string."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "tracer":  # from tracer import x
                out += [(node.lineno, f"tracer.{a.name}") for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            out.append((node.lineno, node.value.split(":")[0]))
    return [(line, m) for line, m in out if m == "tracer" or m.startswith("tracer.")]


LAYERED = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in MAY_IMPORT)


@pytest.mark.parametrize("path", LAYERED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_runs_the_one_way(path: Path):
    layer = path.relative_to(PACKAGE).parts[0]
    wrong = [f"{path.relative_to(PACKAGE)}:{line} imports {m}" for line, m in imported(path)
             if _layer(m) is not None and _layer(m) not in MAY_IMPORT[layer] | EVERYONE]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_lazy_imports_and_registry_strings(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text('def f():\n    import tracer.render.hops\nX = {"a": "tracer.app.analyze:analyze"}\n')
    assert imported(probe) == [(2, "tracer.render.hops"), (3, "tracer.app.analyze")]
