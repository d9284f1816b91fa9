"""Optional dependencies: imported only where used, with one line naming the extra that installs them."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import UserError


def require(module: str, extra: str, what: str = "this") -> Any:
    """Import and return `module`, or raise one line saying that `what` needs its package and which extra has it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]  # what pip installs: 'matplotlib' for 'matplotlib.figure'
        raise UserError(f"{what} needs {package}: pip install 'mnistcli[{extra}]'") from None
