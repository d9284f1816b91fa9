"""The seeded, class-balanced part of a split that data.fraction and data.limit select."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Subset

from ..utils.errors import UserError

if TYPE_CHECKING:
    from ..config.schema import Config

log = logging.getLogger(__name__)


def take(src: Any, idx: torch.Tensor) -> Any:
    """Select samples by index from tensors or a dataset (a Subset of a Subset is one Subset of the dataset)."""
    if isinstance(src, tuple):
        return src[0][idx], src[1][idx]
    if isinstance(src, Subset):
        return Subset(src.dataset, [src.indices[i] for i in idx.tolist()])
    return Subset(src, idx.tolist())


def part_settings(cfg: Config) -> str:
    """The data.fraction / data.limit that select a part of each split, as text; empty when splits are whole."""
    settings = [f"data.fraction {cfg.data.fraction:g}"] if cfg.data.fraction < 1 else []
    return ", ".join(settings + ([f"data.limit {cfg.data.limit}"] if cfg.data.limit is not None else []))


def targets_of(src: Any) -> torch.Tensor:
    """The class index of each sample of an opened split, without decoding images where the dataset keeps them."""
    if isinstance(src, tuple):
        return src[1]
    base = src.dataset if isinstance(src, Subset) else src
    if getattr(base, "targets", None) is None:  # a dataset that makes each label with its sample: read them once
        return torch.tensor([int(src[i][1]) for i in range(len(src))], dtype=torch.int64)
    targets = torch.as_tensor(base.targets, dtype=torch.int64)
    return targets[torch.as_tensor(src.indices, dtype=torch.int64)] if base is not src else targets


def part_indices(targets: torch.Tensor, fraction: float, limit: int | None, seed: int, split: str) -> torch.Tensor:
    """Seeded, class-balanced part of a split: round(n_c * share) images of each class c present (at least one),
    the share being data.fraction, lowered so that the total is at most data.limit; indices in the split's order."""
    classes, counts = torch.unique(targets, return_counts=True)
    share = fraction if limit is None else min(fraction, limit / len(targets))
    keep = [max(1, round(n * share)) for n in counts.tolist()]
    if limit is not None and len(keep) > limit:
        raise UserError(
            f"data.limit {limit} is below the {len(keep)} classes of the {split} split: each class keeps at least "
            f"one image; use data.limit >= {len(keep)}"
        )
    while limit is not None and sum(keep) > limit:  # rounding up overshot: drop from the most rounded-up class
        over = [k - n * share if k > 1 else -math.inf for k, n in zip(keep, counts.tolist())]
        keep[over.index(max(over))] -= 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in zip(classes.tolist(), keep):
        members = (targets == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values


def select_parts(cfg: Config, splits: dict[str, Any]) -> dict[str, Any]:
    """Each split cut to its part (data.fraction, data.limit), logged in one line."""
    out, counts = {}, []
    for name, src in splits.items():
        targets = targets_of(src)
        idx = part_indices(targets, cfg.data.fraction, cfg.data.limit, cfg.seed, name)
        out[name] = take(src, idx)
        counts.append(f"{name} {len(idx)} of {len(targets)}")
    log.info("%s: using %s images, each class in its share", part_settings(cfg), ", ".join(counts))
    return out
