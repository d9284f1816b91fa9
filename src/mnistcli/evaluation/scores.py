"""`evaluate_checkpoint`: a checkpoint's loss, accuracy and where it fails (confusion matrix, precision, recall, F1,
calibration error) on a split of the dataset it records; `compare_checkpoints`: two checkpoints on the same images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config.schema import Config, load_config
from ..data.loaders import make_batches, open_splits
from ..data.pipeline import check_tta, tta_views
from ..data.records import check_unchanged
from ..data.subsets import part_settings, targets_of
from ..engine import evaluate
from ..losses import eval_loss
from ..models.families import family_of
from ..runs.checkpoint import load_model, outputs_log_probs
from ..runs.features import feature_batches, split_features
from ..runs.folder import OWNER
from ..utils import distributed as ddp
from ..utils.errors import UserError
from ..utils.metrics import confusion_matrix, expected_calibration_error, mcnemar_exact, per_class, wilson_interval
from ..utils.runtime import resolve_device

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
ECE_BINS = 15
MISTAKES = 25  # the most confident mistakes eval_details locates in the split, for a picture of them
SIGNIFICANCE = 0.05  # McNemar p-value below which compare_checkpoints names the better checkpoint
LOCATION = ("root", "train_dir", "val_dir", "test_dir")  # the data.* keys that say where the images are


class Tempered(nn.Module):
    """A model's outputs divided by a calibration temperature; log-probability outputs stay log-probabilities."""

    def __init__(self, model: nn.Module, temperature: float, log_probs: bool) -> None:
        super().__init__()
        self.model, self.temperature, self.log_probs = model, temperature, log_probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(output / T) as logits, or as log-probabilities for a log-softmax model."""
        out = self.model(x) / self.temperature
        return out.log_softmax(1) if self.log_probs else out


class Averaged(nn.Module):
    """Test-time augmentation: the mean of softmax(output / temperature) over the views of each image
    (pipeline.tta_views), as log-probabilities (what `eval` scores its loss on)."""

    def __init__(self, model: nn.Module, temperature: float, mode: str) -> None:
        super().__init__()
        self.model, self.temperature, self.mode = model, temperature, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log of the averaged probabilities (a log-softmax model's log p renormalises alike)."""
        probs = torch.stack([(self.model(v).float() / self.temperature).softmax(1) for v in tta_views(x, self.mode)])
        return probs.mean(0).clamp_min(torch.finfo(torch.float32).tiny).log()


@dataclass
class Opened:
    """A checkpoint's model and one split of its dataset, ready to evaluate."""

    path: Path
    model: nn.Module
    info: dict[str, Any]
    cfg: Config
    split: str
    data: Any  # the opened split: (uint8 images, labels) tensors or a dataset yielding uint8 samples
    device: torch.device

    def outputs(
        self, temperature: float = 1.0, progress: bool = False, desc: str | None = None, tta: str = "none"
    ) -> dict[str, Any]:
        """engine.evaluate over the split, outputs divided by `temperature` (`tta`: probabilities averaged over the
        test-time views, as log-probabilities), every image's output and label kept."""
        log_probs = outputs_log_probs(self.info["arch"])
        world = ddp.launched()  # under torchrun: this rank's contiguous share of the split, each image once
        model, batches = self._batches(world, progress, images=tta != "none")
        if tta != "none":
            model, log_probs = Averaged(model, temperature, tta), True
        elif temperature != 1.0:
            model = Tempered(model, temperature, log_probs)
        width, desc = len(self.info["classes"]), desc or f"eval {self.split}"
        res = evaluate(
            *(model, batches, eval_loss(log_probs), self.device, width),
            progress=progress,
            desc=desc,
            keep=True,
            across_ranks=world.active,
        )
        if world.active:  # the shares in rank order are the split in its order: per-image results as one process
            shares = ddp.gather((res["outputs"], res["targets"]))
            res["outputs"], res["targets"] = (torch.cat([share[i] for share in shares]) for i in (0, 1))
        return res

    def _batches(self, world: ddp.World, progress: bool, images: bool = False) -> tuple[nn.Module, Any]:
        """What to run over which batches: a backbone model's head over the split's features (read from the run
        folder's cache, or computed and kept there when the checkpoint lies in its run folder), else (`images`:
        test-time augmentation needs them) the model over the images."""
        spec = self.info["input_spec"]
        if not family_of(self.info["arch"]).transfer or world.active or images:
            return self.model, make_batches(self.data, self.cfg, spec, self.device, False, world=world)
        folder = self.path.parent
        features = split_features(
            *(self.model.backbone, self.data, self.cfg, spec, self.device, self.split, folder),
            progress=progress,
            write=(folder / OWNER).is_file(),  # a run folder: its features are for every later eval
        )
        return self.model.head, feature_batches(features, self.cfg, spec, self.device, False)


@dataclass
class EvalDetails:
    """evaluate_checkpoint's report with the per-image results behind it, in the split's order."""

    report: dict[str, Any]
    classes: list[str]
    confidences: np.ndarray  # float64: the predicted class's probability (temperature applied)
    correct: np.ndarray  # bool
    predicted: np.ndarray  # int64 class indices
    true: np.ndarray  # int64 class indices
    mistakes: np.ndarray  # int64 indices into `split` of the most confident mistakes, most confident first
    split: Any  # the evaluated images: mistake_images(details.split, details.mistakes)


def open_for_eval(
    ckpt_path: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    device: str = "auto",
    part: bool = False,
    like: Opened | None = None,
) -> Opened:
    """Load a checkpoint and open `split` as evaluate_checkpoint does; `like`: another opened checkpoint whose images
    to use (the same dataset and classes, else one line)."""
    if split not in SPLITS:
        raise UserError(f"--split '{split}' is not a split; allowed: {', '.join(SPLITS)}")
    world = ddp.launched()
    dev = resolve_device(ddp.device_name(device, world), "--device")
    model, info = load_model(ckpt_path, dev)
    cfg = load_config(info["config"], stored=True)
    ddp.start(world, dev, cfg.train.dist_timeout)  # under torchrun (nothing otherwise): ranks share the split
    if like is not None:
        _check_comparable(like, cfg, info, ckpt_path)
        for key in LOCATION:
            setattr(cfg.data, key, getattr(like.cfg.data, key))
    if data_root is not None:
        if cfg.data.name == "image_folder":  # the folder of class sub-folders to evaluate on
            setattr(cfg.data, "val_dir" if split == "val" else f"{split}_dir", str(data_root))
        else:
            cfg.data.root = str(data_root)
    cfg.data.download = False  # evaluation never fetches data behind the user's back
    trained_on = part_settings(cfg)
    if trained_on and not part:  # a quick trial is still scored on the whole split: numbers comparable to full runs
        log.info("note: trained on part of each split (%s); evaluating on the whole %s split", trained_on, split)
        cfg.data.fraction, cfg.data.limit = 1.0, None
    records: dict[str, Any] = {}
    splits, _ = open_splits(cfg, info["input_spec"], [split], classes=info["classes"], records=records)
    if split in ("train", "val") and data_root is None and like is None:  # 'val' is exactly the split the run used
        check_unchanged(
            {k: v for k, v in (info.get("splits") or {}).items() if k in records},
            records,
            f"{Path(ckpt_path).name} was trained",
            f"its '{split}' split would not be the one the run used; restore the folder, or evaluate on --split test",
        )
    return Opened(Path(ckpt_path), model, info, cfg, split, splits[split], dev)


def evaluate_checkpoint(
    ckpt_path: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    part: bool = False,
    tta: str = "none",
) -> dict[str, Any]:
    """Evaluate on `split` ('val'/'train' are the seeded split the run used); data_root relocates the data; `part`:
    only the part of the split a run on data.fraction/data.limit used (by default the whole split); `tta`:
    test-time augmentation (none, flip, shift, flip+shift)."""
    return eval_details(ckpt_path, split, data_root, device, progress, part, tta=tta).report


def eval_details(
    ckpt_path: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    part: bool = False,
    mistakes: int = MISTAKES,
    tta: str = "none",
) -> EvalDetails:
    """evaluate_checkpoint's report, plus every image's result and the `mistakes` most confident errors; `tta`:
    probabilities averaged over flipped and/or shifted views of each image (predict --tta does the same)."""
    check_tta(tta)
    run = open_for_eval(ckpt_path, split, data_root, device, part)
    classes, temperature = run.info["classes"], run.info["temperature"]
    res = run.outputs(temperature, progress, tta=tta)
    predicted = res["outputs"].argmax(1)  # the prediction engine.evaluate scored
    probs = res["outputs"].double().softmax(1)  # log-probabilities too: softmax renormalises exp(log p)
    conf = probs.gather(1, predicted[:, None])[:, 0].numpy()
    true, pred = res["targets"].numpy(), predicted.numpy()
    correct = pred == true
    report = {
        "checkpoint": str(ckpt_path),
        "dataset": run.cfg.data.name,
        "split": split,
        "n": res["n"],
        "accuracy": res["accuracy"],
        "loss": res["loss"],
        "per_class": dict(zip(classes, res["per_class"])),
        **_scores(confusion_matrix(true, pred, len(classes)), classes),
        "ece": expected_calibration_error(conf, correct, ECE_BINS),
        "temperature": temperature,
        "tta": tta,
    }
    size = len(run.data[1]) if isinstance(run.data, tuple) else len(run.data)
    worst = _most_confident_mistakes(conf, correct, size, mistakes)
    return EvalDetails(report, list(classes), conf, correct, pred, true, worst, run.data)


def _scores(matrix: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The report's per-class precision/recall/F1/support, their averages, the accuracy's 95% interval, the matrix."""
    scores = per_class(matrix)
    fields = ("precision", "recall", "f1", "support")
    return {
        "per_class_metrics": {c: {k: scores[k][i] for k in fields} for i, c in enumerate(classes)},
        "macro": scores["macro"],
        "weighted": scores["weighted"],
        "accuracy_ci95": list(wilson_interval(int(np.trace(matrix)), int(matrix.sum()))),
        "confusion_matrix": matrix.tolist(),
    }


def _most_confident_mistakes(conf: np.ndarray, correct: np.ndarray, size: int, k: int) -> np.ndarray:
    """Indices into the split of the k most confident mistakes; none when some of the split's images could not be
    read (results then no longer line up with the split's images)."""
    if len(conf) != size:
        log.warning("%d of the %d images could not be read: the mistakes are not located", size - len(conf), size)
        return np.empty(0, dtype=np.int64)
    wrong = np.flatnonzero(~correct)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:k]


def mistake_images(split: Any, indices: Any) -> np.ndarray:
    """Stored uint8 pixels of an opened split's images (EvalDetails.split) by index: (k, height, width, channels)."""
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
    if isinstance(split, tuple):
        pixels = split[0][idx.to(split[0].device)]
    else:
        samples = [split[i][0] for i in idx.tolist()]
        unread = [s.message() for s in samples if not isinstance(s, torch.Tensor)]
        if unread:
            raise UserError(unread[0])
        pixels = torch.stack(samples) if samples else torch.empty(0, 0, 0, 0, dtype=torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def compare_checkpoints(
    a: str | Path, b: str | Path, split: str = "test", data_root: str | Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Two checkpoints on the same images of A's dataset: accuracies, the images only one gets right, McNemar's exact
    p-value on those, and a verdict."""
    first = open_for_eval(a, split, data_root, device)
    second = open_for_eval(b, split, device=device, like=first)
    if not torch.equal(targets_of(first.data), targets_of(second.data)):
        why = (
            "the runs' seed or data.val_split differ; compare on the test split"
            if split != "test"
            else "different files"
        )
        raise UserError(f"cannot compare {a} and {b}: their {split} splits hold different images ({why})")
    right = [r["outputs"].argmax(1) == r["targets"] for r in (first.outputs(desc="A"), second.outputs(desc="B"))]
    n = len(right[0])
    only_a, only_b = int((right[0] & ~right[1]).sum()), int((~right[0] & right[1]).sum())
    p = mcnemar_exact(only_a, only_b)
    if p < SIGNIFICANCE:  # p < 1 only when only_a != only_b
        verdict = f"{'A' if only_a > only_b else 'B'} is better (p = {p:.3g})"
    else:
        verdict = f"no significant difference (p = {p:.3g})"
    return {
        "a": str(a),
        "b": str(b),
        "dataset": first.cfg.data.name,
        "split": split,
        "n": n,
        "accuracy_a": int(right[0].sum()) / n if n else float("nan"),
        "accuracy_b": int(right[1].sum()) / n if n else float("nan"),
        "only_a": only_a,
        "only_b": only_b,
        "p_value": p,
        "verdict": verdict,
    }


def _check_comparable(first: Opened, cfg: Config, info: dict[str, Any], path: str | Path) -> None:
    """Refuse, in one line, to compare checkpoints of different datasets or class lists."""
    a, b = first.info["classes"], info["classes"]
    where = f"cannot compare {first.path} and {path}"
    if cfg.data.name != first.cfg.data.name:
        raise UserError(f"{where}: one is of dataset {first.cfg.data.name}, the other of {cfg.data.name}")
    if a != b:
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        detail = f"{len(a)} classes vs {len(b)}" if diff is None else f"class {diff} is {a[diff]!r} vs {b[diff]!r}"
        raise UserError(f"{where}: their class lists differ ({detail})")
