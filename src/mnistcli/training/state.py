"""The state of one training run, and how it is built around a model from a config."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.schema import Config
from ..data.input_spec import InputSpec
from ..data.loaders import DeviceBatches
from ..engine import StepSetup
from ..losses import build_loss
from ..models.families import ModelFamily, build_model, family_of
from ..optim import LRSchedule, build_optimizer
from ..runs.features import cache_off, feature_batches, split_features
from ..runs.folder import FEATURES
from ..utils.distributed import SINGLE, StopRequest, World
from ..utils.progress import Display
from ..utils.runtime import amp_dtype
from ..utils.stopwatch import Stopwatch
from .averaging import WeightAverage

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one training run holds between epochs."""

    cfg: Config
    out: Path
    device: torch.device
    spec: InputSpec
    arch: dict[str, Any]
    classes: list[str]
    model: nn.Module
    train_batches: DeviceBatches
    val_batches: DeviceBatches
    setup: StepSetup
    schedule: LRSchedule
    epoch: int = 0  # epochs completed
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    partial: dict[str, Any] | None = None  # sums of an epoch interrupted part-way
    versions: dict[str, Any] = field(default_factory=dict)  # software, commit and device, for every checkpoint
    splits: dict[str, Any] = field(default_factory=dict)  # what the image folders read were made of, by split
    step_model: nn.Module | None = None  # what the loop calls: the model, in DDP and compiled as asked
    run_id: str = ""  # identifies the run across resumes: the run folder's owner
    world: World = SINGLE  # this process's rank among torchrun's processes
    watch: Stopwatch = field(default_factory=Stopwatch)  # seconds by phase: training, validation, checkpoints
    image_batches: tuple[DeviceBatches, DeviceBatches] | None = None  # kept while cached features stand in for them
    average: WeightAverage | None = None  # train.ema: the moving average of the weights

    def __post_init__(self) -> None:
        if self.step_model is None:
            self.step_model = step_model_of(self.model, self.cfg, self.world, self.device)

    @property
    def family(self) -> ModelFamily:
        """The model's registry entry."""
        return family_of(self.arch)

    @property
    def eval_model(self) -> nn.Module:
        """What validation runs: the weights' average (train.ema) or the model, their head on cached features;
        under torchrun the plain module (DDP's forward would sync buffers); else what the loop calls."""
        if self.average is not None:
            return self.average.model.head if self.image_batches is not None else self.average.model
        if self.world.active:
            return self.model.head if self.image_batches is not None else self.model
        return self.step_model if self.step_model is not None else self.model

    @property
    def backbone_trains(self) -> bool:
        """Whether a transfer model's backbone is unfrozen (false for every other family)."""
        return self.family.transfer and not self.model.frozen


def build_run_model(
    cfg: Config, arch: dict[str, Any], device: torch.device, cl: bool, weights: Any = None
) -> nn.Module:
    """Model from its spec; a transfer family's gets the fetched pretrained `weights` and is frozen as asked."""
    model = build_model(arch)
    if family_of(arch).transfer:
        from ..models.backbones import load_pretrained, set_backbone_trainable

        if weights is not None:
            log.info("pretrained weights: %s", load_pretrained(model, arch["name"], None, weights))
        freeze = cfg.model.freeze or ("backbone" if cfg.model.pretrained else "none")
        set_backbone_trainable(model, freeze == "none")
    model.to(device)
    if cl:
        model.to(memory_format=torch.channels_last)  # NHWC convolutions: measured faster on CPU and CUDA
    return model


def param_groups_of(model: nn.Module, family: ModelFamily, cfg: Config) -> list[dict[str, Any]]:
    """Trainable parameters only; a transfer model's backbone gets its own group and lr."""
    if family.transfer:
        from ..models.backbones import param_groups

        return param_groups(model, cfg.optimizer.lr, cfg.optimizer.backbone_lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def new_run(
    cfg: Config,
    out: Path,
    device: torch.device,
    spec: InputSpec,
    arch: dict[str, Any],
    classes: list[str],
    model: nn.Module,
    batches: tuple[DeviceBatches, DeviceBatches],
    world: World = SINGLE,
    stop: StopRequest | None = None,
    class_counts: list[int] | None = None,
    **identity: Any,
) -> Run:
    """Optimizer, schedule, scaler and loss around a fresh model and its (train, val) batches (`class_counts`: the
    training images per class, for loss.class_weights; `stop`: the run's stop request; `identity`: the run's
    run_id, versions and splits); under torchrun the loop calls the model through DistributedDataParallel."""
    dtype = amp_dtype(cfg.train.amp, device)
    optimizer = build_optimizer(param_groups_of(model, family_of(arch), cfg), cfg.optimizer)
    steps = math.ceil(len(batches[0]) / cfg.train.accumulate)  # optimizer steps per epoch
    schedule = LRSchedule(optimizer, cfg.scheduler, cfg.train.epochs, steps, cfg.train.max_steps)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    loss = build_loss(cfg.loss, class_counts).to(device)
    ema = cfg.train.ema
    average = WeightAverage(model, ema.decay, ema.warmup) if ema is not None else None
    setup = StepSetup(
        *(loss, optimizer, schedule, scaler, dtype, cfg.train.grad_clip, cfg.train.on_nan),
        stop=stop or StopRequest(world),
        accumulate=cfg.train.accumulate,
        average=average,
    )
    return Run(
        cfg,
        out,
        device,
        spec,
        arch,
        classes,
        model,
        *batches,
        setup,
        schedule,
        world=world,
        average=average,
        **identity,
    )


def step_model_of(model: nn.Module, cfg: Config, world: World, device: torch.device) -> nn.Module:
    """What the loop calls: the model, in DDP under torchrun, compiled when asked. All wrappers share the model's
    parameters, so checkpoints keep saving `model` itself (the single-process format)."""
    if world.active:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.train.compile else model


def unfreeze(run: Run) -> None:
    """Make the backbone trainable and give it its own optimizer group (at optimizer.backbone_lr); a run on cached
    features goes back to the images, in the order the features had reached."""
    from ..models.backbones import set_backbone_trainable

    set_backbone_trainable(run.model, True)
    lr = run.cfg.optimizer.backbone_lr or run.cfg.optimizer.lr
    params = [p for n, p in run.model.named_parameters() if n.startswith("backbone.")]
    run.setup.optimizer.add_param_group({"params": params, "lr": lr, "name": "backbone"})
    run.schedule.add_group(run.setup.optimizer.param_groups[-1], lr / run.cfg.optimizer.lr)
    on_features = run.image_batches is not None
    if on_features:
        images, _ = run.image_batches
        images.load_state(run.train_batches.state())
        run.train_batches, run.val_batches = run.image_batches
        run.image_batches = None
    if on_features or run.world.active:  # the whole network again; DDP reduces only what trained when it was built
        run.step_model = step_model_of(run.model, run.cfg, run.world, run.device)
    log.info("backbone unfrozen (lr %.3g)", lr)


def use_cached_features(run: Run, splits: dict[str, Any], progress: Display | bool, channels_last: bool) -> None:
    """Train and validate the head on the frozen backbone's features, computed once per split, where that gives
    what the full network would (runs/features.py); says so, or why not, in one line."""
    unfreeze_at = run.cfg.train.unfreeze_at_epoch
    if not run.family.transfer or run.backbone_trains or (unfreeze_at is not None and unfreeze_at <= run.epoch + 1):
        return
    why = cache_off(run.cfg, run.train_batches.transform.random, run.world.active)
    if why is not None:
        log.info("feature cache off: %s", why)
        return
    backbone, cfg = run.model.backbone, run.cfg
    found = {
        split: split_features(
            *(backbone, splits[split], cfg, run.spec, run.device, split, run.out, run.setup.amp_dtype),
            channels_last=channels_last,
            progress=progress,
        )
        for split in ("train", "val")
    }
    batches = {s: feature_batches(found[s], cfg, run.spec, run.device, s == "train") for s in found}
    batches["train"].load_state(run.train_batches.state())  # a resume's data order, and where in the epoch it is
    batches["train"].order.skip = run.train_batches.order.skip
    run.image_batches = (run.train_batches, run.val_batches)
    run.train_batches, run.val_batches = batches["train"], batches["val"]
    run.step_model = torch.compile(run.model.head) if cfg.train.compile else run.model.head
    n, width = len(found["train"][1]), found["train"][0].shape[1]
    log.info(
        "feature cache: the frozen %s backbone ran once per split (%d train, %d val images, %d features each, kept "
        "in %s); the head trains on them (exact: no random augmentation); train.feature_cache: false turns it off",
        *(cfg.model.name, n, len(found["val"][1]), width, run.out / FEATURES),
    )
