"""dev.sh on a machine whose python3 is older than tracer needs (Ubuntu 22.04's is 3.10): it takes
the first of python3.13, python3.12, python3.11 on PATH that is >= 3.11, else says what to install.

`bash dev.sh --which-python` runs only that part. The interpreters are fakes: shell scripts that
answer `--version` and dev.sh's `-c` version query as a Python of their version would. PATH holds
only them, and /usr/bin/python3 (dev.sh tries the distribution's first) is one of them too, bound
over the real one in a mount namespace of the test's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.root  # (the mount namespace)

REPO = Path(__file__).resolve().parent.parent
FAKE = """#!/bin/sh
# Python {version}, as far as dev.sh asks
case "$1" in
    --version) echo "Python {version}" ;;
    -c) case "$2" in
            *"sys.exit(sys.version_info < (3, 11))"*) exit {older} ;;
            *) echo "a fake Python cannot run: $2" >&2; exit 1 ;;
        esac ;;
    *) exit 2 ;;
esac
"""
PYENV_SHIM = """#!/bin/sh
# a pyenv shim of a version pyenv does not have
echo "pyenv: $(basename "$0"): command not found" >&2
exit 127
"""


def fake(path: Path, version: str | None) -> Path:
    """A fake interpreter of `version` at `path` (None: a pyenv shim that runs none)."""
    older = int(tuple(int(x) for x in version.split(".")[:2]) < (3, 11)) if version else 0
    path.write_text(FAKE.format(version=version, older=older) if version else PYENV_SHIM)
    path.chmod(0o755)
    return path


def which_python(tmp_path: Path, on_path: dict[str, str | None], *,
                 system: str = "3.10.12") -> subprocess.CompletedProcess[str]:
    """`bash dev.sh --which-python` with only `on_path` (name: version) on PATH and a `system`
    Python at /usr/bin/python3."""
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    bin_dir.mkdir()
    tools.mkdir()
    for name, version in on_path.items():
        fake(bin_dir / name, version)
    (tools / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")  # (dev.sh's cd)
    system_python = fake(tmp_path / "system-python3", system)
    script = ('if [ -e /usr/bin/python3 ]; then mount --bind "$1" /usr/bin/python3 || exit 99; fi; '
              'exec /usr/bin/env PATH="$2" /bin/bash "$3" --which-python')
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh",
         str(system_python), f"{bin_dir}:{tools}", str(REPO / "dev.sh")],
        capture_output=True, text=True, timeout=30, env={**os.environ, "LC_ALL": "C"})


@pytest.mark.parametrize("on_path,chosen", [
    ({"python3": "3.10.12", "python3.11": "3.11.9"}, "python3.11"),
    ({"python3": "3.10.12", "python3.13": "3.13.1", "python3.12": "3.12.3", "python3.11": "3.11.9"}, "python3.13"),
    ({"python3": "3.10.12", "python3.13": None, "python3.12": None, "python3.11": "3.11.9"}, "python3.11"),
    ({"python3": "3.10.12", "python3.12": "3.12.3"}, "python3.12"),
    ({"python3": "3.12.3", "python3.11": "3.11.9"}, "python3"),
])
def test_an_older_python3_gives_way_to_the_first_newer_one_on_path(tmp_path: Path, on_path: dict,
                                                                    chosen: str) -> None:
    res = which_python(tmp_path, on_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{tmp_path / 'bin' / chosen}\n"


def test_the_distributions_python_comes_first_when_it_is_new_enough(tmp_path: Path) -> None:
    res = which_python(tmp_path, {"python3": "3.12.3", "python3.13": "3.13.1"}, system="3.11.2")
    assert (res.returncode, res.stdout) == (0, "/usr/bin/python3\n"), res.stderr


def test_without_a_python_that_fits_it_says_what_there_is_and_what_to_install(tmp_path: Path) -> None:
    res = which_python(tmp_path, {"python3": "3.10.12", "python3.12": None})
    assert res.returncode == 1 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert lines[0] == ("tracer needs Python >= 3.11, and there is none here (/usr/bin/python3 is Python 3.10.12, "
                        f"{tmp_path / 'bin' / 'python3'} is Python 3.10.12)")
    assert "apt-get install python3.11 python3.11-venv" in lines[1]
    alone = tmp_path / "alone"
    alone.mkdir()
    res = which_python(alone, {})  # nothing on PATH, and the distribution's too old
    assert res.returncode == 1 and "(/usr/bin/python3 is Python 3.10.12)" in res.stderr
