"""The codebase's own rules that no linter states: no module imports a private name from another."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sycam_dsl"
#: Underscored names other libraries export (in their ``__all__``) as the way to extend them.
EXPORTED = {"torchcam.methods.core": {"_CAM"}}  # torchcam's base class of CAM methods (integrations/torchcam.py)


def private_imports(source: str) -> list[str]:
    """``from x import _y`` names (dunders such as ``__version__`` are public)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                exported = node.level == 0 and alias.name in EXPORTED.get(node.module or "", set())
                if alias.name.startswith("_") and not alias.name.startswith("__") and not exported:
                    found.append(f"from {'.' * node.level}{node.module or ''} import {alias.name}")
    return found


def test_the_check_finds_a_private_import():
    assert private_imports("from .models import _read_state_dict, load_model\nfrom . import __version__") == [
        "from .models import _read_state_dict"]
    assert private_imports("from torchcam.methods.core import _CAM\nfrom torchcam.methods import _utils") == [
        "from torchcam.methods import _utils"]


def test_no_module_imports_a_private_name():
    offenders = {str(p.relative_to(PACKAGE)): private_imports(p.read_text()) for p in PACKAGE.rglob("*.py")}
    assert {p: names for p, names in offenders.items() if names} == {}
