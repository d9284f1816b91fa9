"""The path of `mnistcli train`: the package's frames on the call stack at the first optimizer step, outermost
first, as docs/ARCHITECTURE.md lists them.

    python scripts/train_path.py configs/mnist_fast.yaml --out /tmp/path --overwrite --set train.max_steps=1

Runs the console command itself (`mnistcli.cli.app.main`) with the given arguments; a torch optimizer hook reads the
stack at the first step and prints it when the command ends."""

from __future__ import annotations

import atexit
import sys

from torch.optim.optimizer import register_optimizer_step_pre_hook

import mnistcli
from mnistcli.cli.app import main

PACKAGE = mnistcli.__file__.rsplit("/", 1)[0] + "/"


def package_frames() -> list[str]:
    """`module.function` of each of the package's frames on this thread's stack, outermost first."""
    frame, found = sys._getframe(1), []
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(PACKAGE):
            module = path[len(PACKAGE) :].removesuffix(".py").replace("/", ".")
            found.append(f"{module}.{frame.f_code.co_name}")
        frame = frame.f_back
    return found[::-1]


def main_with_path() -> None:
    seen: list[list[str]] = []

    def first_step(optimizer, args, kwargs) -> None:
        if not seen:
            seen.append(package_frames())

    register_optimizer_step_pre_hook(first_step)
    atexit.register(lambda: print(f"{len(seen[0])} frames: " + " > ".join(seen[0]) if seen else "no step", flush=True))
    sys.argv = ["mnistcli", "train", *sys.argv[1:]]
    main()


if __name__ == "__main__":
    main_with_path()
