"""Optional dependencies, imported lazily: one helper instead of a try/except in every module.

`pip install lnrt` gives the CPU runtime; extras add the rest (docs/ARCHITECTURE.md, "Layout").
A feature that needs a missing extra fails with one line that names the package and the extra, at the
moment the feature is asked for, never at `import lnrt`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import missing_extra


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """`import module`, or an `LnrtError` saying `pip install 'lnrt[extra]'` (naming `package`, the name
    on PyPI, when it differs from the module's)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(package or module.split(".")[0], extra) from None


def available(module: str) -> bool:
    """Whether `module` imports (a broken install counts as absent)."""
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a binary that fails to load
        return False
    return True
