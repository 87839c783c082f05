"""The top-level package: its names, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import flagware


def test_dir_lists_the_public_names_and_each_resolves() -> None:
    # Not the module's own imports: a trial read `Any` and `import_module` as API.
    assert dir(flagware) == sorted([*flagware.__all__, "__version__"])
    for name in flagware.__all__:
        assert getattr(flagware, name).__name__ == name


def test_importing_flagware_loads_no_sdk() -> None:
    """`flagware events` and `flagware results` read a store without the SDK."""
    code = (
        "import sys, flagware; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('statsig', 'flask')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
