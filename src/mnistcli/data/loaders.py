"""Batches for the loop: the whole uint8 set held on the device, or torch's DataLoader for folders and large sets.

Either way a loader yields uint8 (N, C, H, W) batches; `DeviceBatches` moves them to the device and applies the
batch transform (augmentation, normalization) there.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset, default_collate

from ..utils.distributed import SINGLE, ShardBatches, World
from ..utils.errors import UserError
from .datasets import DATASETS, check_same_classes, load_split
from .image_folder import Unreadable, report_unreadable, warn_skipped
from .input_spec import InputSpec
from .pipeline import BatchMix, BatchTransform, SampleTransform
from .records import folder_record
from .subsets import part_settings, select_parts, take, targets_of

if TYPE_CHECKING:
    from ..config.schema import Config

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the main process stops on them between steps; workers ignore them

log = logging.getLogger(__name__)

Tensors = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, H, W), int64 targets (N,)


class EpochOrder(Sampler[int]):
    """Sample indices in a seeded random (or natural) order; can start part-way through, to resume mid-epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int, weights: torch.Tensor | None = None) -> None:
        self.n, self.shuffle = n, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.skip = 0  # samples of the next epoch already consumed before an interruption
        self.weights = weights  # data.sampler balanced: each sample's chance of being drawn, with replacement

    def __len__(self) -> int:
        return max(self.n - self.skip, 0)  # a resume at the end of an epoch's training skips it all

    def indices(self) -> torch.Tensor:
        """This epoch's order, minus the skipped start; advances the generator once per epoch."""
        if self.weights is not None:  # n draws with replacement: an epoch is as long as the split
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=self.generator)
        else:
            order = torch.arange(self.n)
        start, self.skip = self.skip, 0
        return order[start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class MemoryLoader:
    """Batches by index from tensors kept on the device."""

    def __init__(self, data: Tensors, batch_size: int, order: EpochOrder, drop_last: bool) -> None:
        self.images, self.targets = data
        self.batch_size, self.sampler, self.drop_last = batch_size, order, drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Tensors]:
        count = len(self)
        order = self.sampler.indices().to(self.images.device)
        for i in range(count):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx], self.targets[idx]


class DeviceBatches:
    """Wraps a loader: moves each uint8 batch to the device and turns it into normalized float input.

    Under torchrun a memory loader yields whole global batches and each rank keeps its slice (after augmentation,
    drawn for the whole batch, so every image gets the draw it gets in one process); a DataLoader yields the slice.
    `loss_weight` (local images * ranks / global images) makes DDP's mean of the ranks' gradients the global
    batch's mean when the last batch does not split evenly."""

    def __init__(
        self,
        loader: Any,
        transform: BatchTransform,
        device: torch.device,
        seed: int,
        world: World = SINGLE,
        mix: BatchMix | None = None,
    ) -> None:
        """`mix`: mixup/cutmix of training batches, whose labels become soft targets."""
        self.loader, self.transform, self.device, self.world = loader, transform, device, world
        self.sharded = isinstance(loader, DataLoader) and isinstance(loader.batch_sampler, ShardBatches)
        sampler = loader.batch_sampler if self.sharded else loader
        self.order: EpochOrder = sampler.sampler
        self.batch_size: int = sampler.batch_size  # the global batch: what a resume skips
        self.generator = torch.Generator().manual_seed(seed + 1)  # augmentation draws, separate from order
        self.dataset_size = self.order.n
        self.loss_weight, self.left = 1.0, 0
        self.reported: set[str] = set()  # files already warned about: each once per run
        self.mix = mix

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tensors]:
        skipped = read = 0
        self.left = len(self.order)  # images of this epoch's global batches not yet trained on
        for x, y, *bad in _start_workers(self.loader):  # DataLoader batches also carry the files that failed to decode
            if bad:
                skipped += report_unreadable(bad[0], self.reported)  # here, in the main process: one line, no traceback
            if not len(y):
                continue  # no file of this batch could be decoded
            read += len(y)
            x = x.to(self.device, non_blocking=True)  # non_blocking pays off with pinned memory on CUDA
            y = y.to(self.device, non_blocking=True)
            x, y = (self.transform(x, self.generator), y) if not self.world.active else self._local(x, y)
            yield self.mix(x, y, self.generator) if self.mix is not None else (x, y)
        if skipped:
            warn_skipped(skipped, read)

    def _local(self, x: torch.Tensor, y: torch.Tensor) -> Tensors:
        """This rank's part of a batch as network input, and its loss weight."""
        if self.sharded:  # the sampler took the slice: the global batch is the epoch's next one
            global_n = min(self.batch_size, self.left)
            self.left -= global_n
            self.loss_weight = len(y) * self.world.size / global_n
            return self.transform(x, self.generator), y
        part = self.world.part(len(y))
        self.loss_weight = (part.stop - part.start) * self.world.size / len(y)
        if self.transform.augment is None:  # nothing drawn: transform the slice alone
            return self.transform(x[part], self.generator), y[part]
        return self.transform(x, self.generator)[part], y[part]

    def state(self) -> dict[str, torch.Tensor]:
        """RNG states that fix the data order and augmentation (for exact resume)."""
        return {"order": self.order.generator.get_state(), "augment": self.generator.get_state()}

    def load_state(self, state: dict[str, torch.Tensor], skip_batches: int = 0) -> None:
        """Restore what `state` returned; the next epoch then starts after `skip_batches` batches."""
        self.order.generator.set_state(state["order"])
        self.generator.set_state(state["augment"])
        self.order.skip = skip_batches * self.batch_size


def _init_worker(worker_id: int) -> None:
    """Seed numpy and random from the worker's torch seed (itself from the run's seed); leave Ctrl-C and SIGTERM
    to the main process, which stops cleanly between steps (schedulers signal the whole process group; a worker
    that died of it would crash the main process mid-batch). Workers still exit with the main process: torch's
    worker loop watches its parent."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since the fork (_start_workers)


def _start_workers(loader: Any) -> Iterator[Any]:
    """iter(loader), with Ctrl-C and SIGTERM blocked in this thread while DataLoader workers start: a worker
    inherits the block and ignores both before it unblocks them, so a signal to the process group at that moment
    (the start of every epoch) reaches the main process alone, never a worker that could die of it."""
    main = threading.current_thread() is threading.main_thread()
    if getattr(loader, "num_workers", 0) == 0 or not main or not hasattr(signal, "pthread_sigmask"):
        return iter(loader)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _kill_workers_at_exit() -> None:
    """At interpreter exit multiprocessing stops daemon children (DataLoader workers still alive, e.g. when an
    exception kept a run's loaders referenced) with SIGTERM and waits for them; ours ignore SIGTERM, so they get
    SIGKILL first: the same end for a daemon child, without waiting forever."""
    if hasattr(signal, "SIGCHLD"):  # torch's SIGCHLD handler would report each killed worker as a failure
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def use_memory(cfg: Config, spec: InputSpec) -> bool:
    """Whether the in-memory path applies: forced by data.loader, or auto for sets of known, small size."""
    if cfg.data.loader != "auto":
        return cfg.data.loader == "memory"
    n = DATASETS[cfg.data.name].count(cfg.data)
    if n is None:
        return False  # folders are decoded per sample by DataLoader workers
    return n * math.prod(spec.stored) <= cfg.data.memory_limit_mb * 2**20


def _to_tensors(ds: Any, spec: InputSpec) -> Tensors:
    """Decode a whole dataset (or a Subset of one) into one uint8 tensor at the stored shape."""
    base = ds.dataset if isinstance(ds, Subset) else ds
    data = getattr(base, "data", None)
    if isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and (1, *data.shape[1:]) == spec.stored:
        # IDX datasets hold their images as one tensor already at the stored shape: per-sample decoding
        # (what SampleTransform would do) leaves each one unchanged
        images = data.unsqueeze(1)
        if base is not ds:
            images = images[torch.as_tensor(ds.indices, dtype=torch.int64)]
        return images, targets_of(ds)
    images, targets, bad = collate_readable([ds[i] for i in range(len(ds))])
    if report_unreadable(bad, set()):
        warn_skipped(len(bad), len(targets))
    if not len(targets):
        raise UserError(f"{getattr(base, 'root', 'the dataset')}: none of its {len(ds)} image files could be decoded")
    return images, targets


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """Each sample's chance under data.sampler balanced: 1 / its class's count, so every class is drawn alike."""
    counts = torch.bincount(targets)
    return (1.0 / counts.double())[targets]


def collate_readable(samples: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor, list[Unreadable]]:
    """Stack the samples that were read; pass on, with them, those whose file could not be decoded."""
    bad = [image for image, _ in samples if isinstance(image, Unreadable)]
    good = [sample for sample in samples if not isinstance(sample[0], Unreadable)]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    images, targets = default_collate(good)
    return images, targets, bad


def _open(
    cfg: Config, spec: InputSpec, split: str, memory: bool, records: dict[str, Any] | None = None
) -> tuple[Any, list[str]]:
    """Open one split as tensors (memory) or as a dataset yielding uint8 samples; its files go into `records`."""
    ds = load_split(cfg.data, split, SampleTransform(spec))
    if records is not None:
        records[split] = folder_record(ds)
    # a part of a dataset that keeps its labels is chosen from them: only the chosen images are decoded, later
    lazy = bool(part_settings(cfg)) and getattr(ds, "targets", None) is not None
    return (_to_tensors(ds, spec) if memory and not lazy else ds), DATASETS[cfg.data.name].classes(ds)


def split_indices(
    targets: torch.Tensor, val_split: float | int, seed: int, by_class: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) index split of the samples whose classes are `targets`; val_split is a fraction (< 1) or
    a count. `by_class` (data.val_by_class): each class holds out its share of the validation images (the largest
    remainders round up, so the count is exact); else one seeded draw over all samples (runs made before the
    stratified split recorded none, and keep theirs)."""
    n = len(targets)
    n_val = val_split if isinstance(val_split, int) else round(n * val_split)
    if not 0 < n_val < n:
        raise UserError(f"data.val_split {val_split} leaves {n - n_val} training and {n_val} validation samples of {n}")
    generator = torch.Generator().manual_seed(seed)
    if not by_class:
        order = torch.randperm(n, generator=generator)
        return order[n_val:], order[:n_val]
    classes, counts = torch.unique(torch.as_tensor(targets), return_counts=True)
    exact = counts.double() * n_val / n
    keep = exact.floor().long()
    keep[torch.argsort(exact - keep, descending=True, stable=True)[: n_val - int(keep.sum())]] += 1
    chosen = []
    for c, k in zip(classes.tolist(), keep.tolist()):
        members = (torch.as_tensor(targets) == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    val = torch.cat(chosen).sort().values
    held = torch.zeros(n, dtype=torch.bool)
    held[val] = True
    return (~held).nonzero().flatten(), val


def open_splits(
    cfg: Config,
    spec: InputSpec,
    names: list[str],
    classes: list[str] | None = None,
    records: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Open the named splits ('train', 'val', 'test'); val comes from val_dir or a seeded split of train.
    `records`, when given, receives what each folder opened was made of (`records.folder_record`): 'train' is the
    pool a drawn validation split comes from."""
    memory = use_memory(cfg, spec)
    parts: dict[str, Any] = {}
    if {"train", "val"} & set(names):
        pool, classes = _open(cfg, spec, "train", memory, records)
        if cfg.data.val_dir:
            parts["train"] = pool
            parts["val"], val_classes = _open(cfg, spec, "val", memory, records)
            check_same_classes(classes, val_classes, "val")
        else:
            targets = targets_of(pool)
            train_idx, val_idx = split_indices(targets, cfg.data.val_split, cfg.seed, cfg.data.val_by_class)
            parts["train"], parts["val"] = take(pool, train_idx), take(pool, val_idx)
    if "test" in names:
        parts["test"], test_classes = _open(cfg, spec, "test", memory, records)
        if classes is not None:
            check_same_classes(classes, test_classes, "test")
        classes = classes or test_classes
    parts = {k: parts[k] for k in names}
    if part_settings(cfg):
        parts = select_parts(cfg, parts)
        if memory:  # the parts of datasets that keep their labels are decoded only now
            parts = {k: v if isinstance(v, tuple) else _to_tensors(v, spec) for k, v in parts.items()}
    return parts, list(classes or [])


def make_batches(
    src: Any,
    cfg: Config,
    spec: InputSpec,
    device: torch.device,
    train: bool,
    channels_last: bool = False,
    world: World = SINGLE,
    transform: Any = None,
    num_classes: int = 0,
) -> DeviceBatches:
    """Wrap one opened split into device batches: shuffled and augmented when `train`. Under torchrun training
    batches are split across ranks; evaluation takes this rank's contiguous share of the split (each image once).
    `transform`: what turns a batch into network input instead of the image pipeline (cached features: nothing);
    `num_classes`: the soft targets' width under mixup/cutmix."""
    batch = cfg.data.batch_size if train else cfg.data.eval_batch_size
    n = len(src[1]) if isinstance(src, tuple) else len(src)
    if world.active and not train:
        src = take(src, torch.arange(n)[world.part(n)])
        n = len(src[1]) if isinstance(src, tuple) else len(src)
        world = SINGLE  # evaluation batches are this rank's own: nothing further to split
    balanced = train and cfg.data.sampler == "balanced"  # images or their cached features: the same order
    order = EpochOrder(n, shuffle=train, seed=cfg.seed, weights=balanced_weights(targets_of(src)) if balanced else None)
    # a final batch of one sample breaks batch norm in training; one smaller than the ranks would leave one empty
    drop_last = train and (n % batch == 1 or 0 < n % batch < world.size)
    if isinstance(src, tuple):
        loader: Any = MemoryLoader((src[0].to(device), src[1].to(device)), batch, order, drop_last)
    else:
        workers = cfg.data.num_workers
        if workers is None:  # leave one core to the training process itself
            workers = min(8, max(0, (os.cpu_count() or 1) - 1))
        if workers > 0:  # once, and after multiprocessing's own exit hook (so it runs before it)
            atexit.unregister(_kill_workers_at_exit)
            atexit.register(_kill_workers_at_exit)
        split = {"batch_sampler": ShardBatches(order, batch, drop_last, world)} if world.active else {}
        loader = DataLoader(
            src,
            **(split or {"batch_size": batch, "sampler": order, "drop_last": drop_last}),
            num_workers=workers,
            pin_memory=cfg.data.pin_memory if cfg.data.pin_memory is not None else device.type == "cuda",
            persistent_workers=cfg.data.persistent_workers and workers > 0,
            prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
            worker_init_fn=_init_worker,
            collate_fn=collate_readable,
            # workers' seeds come from a generator of their own, not torch's global one: the model's dropout draws
            # stay the same whether a split is read by workers, held in memory or replaced by cached features
            generator=torch.Generator().manual_seed(cfg.seed),
        )
    aug = cfg.data.augment
    mixed = train and transform is None and bool(aug.mixup or aug.cutmix)
    if transform is None:
        transform = BatchTransform(spec, aug if train else None, channels_last)
    return DeviceBatches(loader, transform, device, cfg.seed, world, BatchMix(aug, num_classes) if mixed else None)
