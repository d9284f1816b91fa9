"""An exponential moving average of a model's weights (train.ema): updated after every optimizer step, used by
validation and saved as the checkpoint's weights, so best.pt, eval, predict and export use it."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """average = d * average + (1 - d) * weights for every floating-point parameter and buffer (batch-norm
    statistics included); integer buffers are copied. With `warmup` the decay d grows as (1 + t) / (10 + t)
    towards `decay` (t: updates so far), so the first steps' random weights fade out fast."""

    def __init__(self, source: nn.Module, decay: float, warmup: bool) -> None:
        self.source, self.decay, self.warmup = source, decay, warmup
        self.model = copy.deepcopy(source).eval()  # the average starts at the initial weights
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def rate(self) -> float:
        """The decay of the next update."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the source model's current weights."""
        d = self.rate()
        self.updates += 1
        mine, theirs = self.model.state_dict(), self.source.state_dict()
        for key, value in mine.items():
            if value.is_floating_point():
                value.lerp_(theirs[key].to(value.dtype), 1.0 - d)
            else:
                value.copy_(theirs[key])

    def state(self) -> dict[str, Any]:
        """What a resumable checkpoint holds to continue averaging: the updates so far (the weights themselves
        are the checkpoint's state_dict)."""
        return {"updates": self.updates}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore the average's weights and its count of updates."""
        self.model.load_state_dict(weights)
        self.updates = int(state["updates"])
