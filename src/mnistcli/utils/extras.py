"""Dependencies that may be missing or broken: optional extras imported only where used, with one line naming the
extra that installs them; a torch or torchvision that fails to import, said in one line."""

from __future__ import annotations

import importlib
import os
import traceback
from typing import Any

from .errors import UserError


def require(module: str, extra: str, what: str = "this") -> Any:
    """Import and return `module`, or raise one line saying that `what` needs its package and which extra has it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]  # what pip installs: 'matplotlib' for 'matplotlib.figure'
        raise UserError(f"{what} needs {package}: pip install 'mnistcli[{extra}]'") from None


REINSTALL = "install the torchvision release built for this torch (https://pytorch.org/get-started/locally/)"


def broken_install(exc: BaseException) -> str | None:
    """The one line for torch or torchvision failing while Python imports them (a torchvision built for another
    torch: "operator torchvision::nms does not exist"; a half-installed wheel), or None when `exc` is anything else.
    An import is told from a run-time error by the frame: module-level code of either package was executing."""
    if not isinstance(exc, (ImportError, OSError, RuntimeError, AttributeError)):
        return None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        path, code = frame.f_code.co_filename, frame.f_code.co_name
        for package in ("torchvision", "torch"):  # torchvision first: its files are not under torch/
            if f"{os.sep}{package}{os.sep}" in path and code == "<module>":
                lines = str(exc).strip().splitlines()
                reason = lines[0] if lines else type(exc).__name__
                return f"{package} cannot be imported ({reason}); fix: {REINSTALL}"
    return None
