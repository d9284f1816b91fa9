"""Non-finite training losses: the one line that stops a run, and finding them on CUDA without a per-step sync."""

from __future__ import annotations

import math
from typing import Any

import torch

from .utils.errors import UserError

SEND_EVERY = 16  # steps whose losses are copied to the host together: one small copy, which the host never waits on


def nonfinite_error(value: float, epoch: int, batch: int) -> UserError:
    """The one line for a run stopped by a non-finite loss."""
    error = UserError(
        f"non-finite loss ({value}) at epoch {epoch}, batch {batch}: training stopped, the last good "
        "checkpoint is kept; lower optimizer.lr, set train.grad_clip, or set train.on_nan: skip"
    )
    error.own = True  # under torchrun: this rank's own finding, said by it (not a copy of rank 0's)
    return error


class NonFiniteWatch:
    """Finds the non-finite losses of a training pass without making the host wait for the device.

    Every SEND_EVERY steps the window's losses are stacked on the device and copied to pinned host memory without
    blocking; the host reads a copy once a CUDA event says the device has finished it, or every copy when it has
    to (a progress line, the end of the pass)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.window: list[tuple[int, int, torch.Tensor]] = []  # (batch, images, loss) not yet sent
        self.sent: list[tuple[list[tuple[int, int]], torch.Tensor, Any]] = []  # (batches, host losses, event)

    def add(self, batch: int, images: int, loss: torch.Tensor) -> None:
        """Record one step's loss (a device tensor)."""
        self.window.append((batch, images, loss.detach()))
        if len(self.window) >= SEND_EVERY:
            self._send()

    def _send(self) -> None:
        """Start copying the window's losses to the host."""
        if not self.window:
            return
        losses = torch.stack([loss.float() for *_, loss in self.window])
        event = None
        if self.cuda:
            host = torch.empty(losses.shape, dtype=losses.dtype, pin_memory=True)
            host.copy_(losses, non_blocking=True)
            event = torch.cuda.Event()
            event.record()  # on the current stream, after the copy
        else:
            host = losses
        self.sent.append(([(b, n) for b, n, _ in self.window], host, event))
        self.window = []

    def _found(self, wait: bool) -> list[tuple[int, int, float]]:
        """(batch, images, loss) of the non-finite losses the host can read now; `wait`: of every step so far."""
        if wait:
            self._send()
        bad = []
        while self.sent and (wait or self.sent[0][2] is None or self.sent[0][2].query()):
            batches, host, event = self.sent.pop(0)
            if event is not None:
                event.synchronize()  # returns at once unless `wait`
            bad += [(b, n, v) for (b, n), v in zip(batches, host.tolist()) if not math.isfinite(v)]
        return bad

    def settle(self, wait: bool, on_nan: str, skipped: list[str], epoch: int) -> int:
        """Act on the non-finite losses found: raise for the first under on_nan stop, else record each as skipped
        ("epoch/batch"); returns the images of the skipped batches."""
        found = self._found(wait)
        for batch, _, value in found:
            if on_nan == "stop":
                raise nonfinite_error(value, epoch, batch)
            skipped.append(f"{epoch}/{batch}")
        return sum(n for _, n, _ in found)
