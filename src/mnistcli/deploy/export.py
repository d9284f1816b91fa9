"""`export_checkpoint`: a checkpoint as one deployable file (TorchScript or ONNX) that takes images at the stored
shape and returns class probabilities. The file is loaded back with its real runtime and checked against PyTorch on
real images before it gets its name; a file that fails the check is removed, and no existing file is replaced."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.input_spec import InputSpec
from ..data.loaders import collate_readable
from ..data.pipeline import check_tta, mode_for, prepare_pixels
from ..data.preprocess import open_image
from ..evaluation.scores import open_for_eval
from ..runs.checkpoint import load_model
from ..utils.errors import CheckpointError, UserError, closest, space_errno
from ..utils.extras import require
from ..utils.files import (
    clean_stale_temps,
    create_new,
    open_new,
    publish_new,
    temp_path,
    writable_folder,
    write_error,
)
from ..utils.runtime import resolve_device
from ..version import __version__
from .artifact import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_KINDS,
    INPUT_NAME,
    META_FILE,
    META_KEY,
    OUTPUT_NAME,
    ExportedModel,
    load_exported,
)
from .predict import class_probabilities, expand_images

FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}  # format -> default suffix beside the checkpoint
TOLERANCE = 1e-4  # largest |probability difference| accepted between the exported file and PyTorch (fp32)
CHECK_IMAGES = 256  # test-split images the check runs, spread evenly over the split
CHECK_BATCHES = (1, 37)  # batch sizes tried besides the whole check batch: one image, and an odd size
EXAMPLE_BATCH = 2  # images traced with: torch.export would fix a batch of 1 as a constant
OPSET = 18  # ONNX opset: Resize's antialias attribute (the pipeline's antialiased resize) needs 18


class ProbabilityModel(nn.Module):
    """Images at the stored shape (uint8, or float in [0, 1]) -> class probabilities, through predict's path."""

    def __init__(
        self, model: nn.Module, spec: InputSpec, temperature: float, input_kind: str, tta: str = "none"
    ) -> None:
        super().__init__()
        self.model, self.spec, self.temperature, self.tta = model, spec, temperature, tta
        self.float_input = input_kind == "float"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, classes): network_input, the model, softmax(output / temperature), averaged over the
        test-time views when exported with --tta."""
        pixels = images * 255 if self.float_input else images  # network_input scales stored pixels by 1/255
        return class_probabilities(self.model, pixels, self.spec, self.temperature, self.tta)


def export_checkpoint(
    ckpt: str | Path,
    fmt: str,
    out: str | Path | None = None,
    input_kind: str = "uint8",
    check_images: str | Path | None = None,
    device: str = "cpu",
    tta: str = "none",
) -> dict[str, Any]:
    """Write `out` (default beside the checkpoint) and `out`.json; nothing is written unless the file, loaded back
    with its runtime, matches PyTorch on real images at every batch size tried. `tta`: the file averages its
    probabilities over predict --tta's views. Returns paths, metadata, check."""
    ckpt = Path(ckpt)
    check_tta(tta)
    target = _target(ckpt, fmt, out, input_kind)
    sidecar = target.with_name(target.name + ".json")
    dev = resolve_device(device, "--device")
    model, info, images, source = _model_and_images(ckpt, check_images, dev)
    spec, temperature = info["input_spec"], info["temperature"]
    with torch.inference_mode():
        reference = torch.cat(
            [class_probabilities(model, b.to(dev), spec, temperature, tta).cpu() for b in images.split(256)]
        )
    wrapper = ProbabilityModel(model, spec, temperature, input_kind, tta).eval()
    example = images[torch.arange(EXAMPLE_BATCH) % len(images)].to(dev)
    example = example.float().div(255) if input_kind == "float" else example
    meta = metadata(ckpt, info, fmt, input_kind)
    meta["tta"] = tta
    write = _write_onnx if fmt == "onnx" else _write_torchscript
    new_folder = not target.parent.exists()
    writable_folder(target.parent, "--out")
    try:
        check = publish_checked(
            target,
            lambda tmp: write(wrapper, example, meta, tmp),
            lambda tmp: _check_file(load_exported(tmp, dev), meta, images, reference),
        )
        check["source"] = source
        _write_sidecar(sidecar, target, meta, check)
    except BaseException:
        if new_folder:  # the folder made for this file: empty again, so it goes too
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        raise
    return {"path": str(target), "sidecar": str(sidecar), "metadata": meta, "check": check}


def _target(ckpt: Path, fmt: str, out: str | Path | None, input_kind: str) -> Path:
    """The options checked before any work; the file to write: a new name, as is the FILE.json beside it (an
    existing file is never replaced)."""
    if fmt not in FORMATS:
        raise UserError(f"--format '{fmt}' is not a format{closest(fmt, FORMATS)}; allowed: {', '.join(FORMATS)}")
    if input_kind not in INPUT_KINDS:
        raise UserError(
            f"--input '{input_kind}' is not an input kind{closest(input_kind, INPUT_KINDS)}; "
            f"allowed: {', '.join(INPUT_KINDS)}"
        )
    if fmt == "onnx":  # the exporter needs onnx and onnxscript, the check onnxruntime
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "onnx", "exporting to ONNX")
    if out is not None and not str(out).strip():
        raise UserError("--out: the file name is empty; give a file name, e.g. --out exported/model.onnx")
    target = ckpt.with_name(ckpt.stem + FORMATS[fmt]) if out is None else Path(out)
    option, fix = ("", "give a new file name with --out FILE") if out is None else ("--out ", "give a new file name")
    if target.is_dir():
        raise UserError(f"{option}{target}: is a folder; {fix}")
    if os.path.lexists(target):
        raise UserError(f"{option}{target}: the file exists and is never replaced; {fix}")
    sidecar = target.with_name(target.name + ".json")
    if os.path.lexists(sidecar):
        raise UserError(f"{sidecar}: the file exists (the export's metadata file) and is never replaced; {fix}")
    return target


def _model_and_images(
    ckpt: Path, folder: str | Path | None, dev: torch.device
) -> tuple[nn.Module, dict[str, Any], torch.Tensor, str]:
    """The model and info, and uint8 check images at the stored shape with their description: --check-images
    prepared as predict prepares them, or up to CHECK_IMAGES of the test split opened as eval opens it."""
    if folder is not None:
        model, info = load_model(ckpt, dev)
        spec = info["input_spec"]
        mode = mode_for(spec, "auto")
        pixels = [prepare_pixels(open_image(path), spec, mode) for path in expand_images([folder])]
        return model, info, torch.stack(pixels), f"{len(pixels)} image(s) from {folder}"
    try:
        run = open_for_eval(ckpt, "test", device=str(dev))
    except CheckpointError:
        raise
    except UserError as exc:  # the dataset is not here: image files will do
        raise UserError(f"{exc}; or check the export on image files with --check-images DIR") from None
    data, spec = run.data, run.info["input_spec"]
    n = len(data[1]) if isinstance(data, tuple) else len(data)
    picks = torch.linspace(0, n - 1, min(n, CHECK_IMAGES)).round().long().unique()  # spread over the split
    if isinstance(data, tuple):
        images = data[0][picks].cpu()
    else:
        images, _, _ = collate_readable([data[int(i)] for i in picks])
    if not len(images):
        raise UserError("none of the test split's check images could be read; give --check-images DIR")
    return run.model, run.info, images, f"{len(images)} images of the {spec.dataset} test split"


def metadata(ckpt: Path, info: dict[str, Any], fmt: str, input_kind: str) -> dict[str, Any]:
    """What an exported file embeds: classes, input spec and contract, output, temperature, versions (plain JSON)."""
    spec, classes = info["input_spec"], list(info["classes"])
    uint8 = input_kind == "uint8"
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_format": fmt,
        "classes": classes,
        "input_spec": spec.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "kind": input_kind,
            "dtype": "uint8" if uint8 else "float32",
            "shape": ["N", *spec.stored],
            "range": [0, 255] if uint8 else [0.0, 1.0],
        },
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(classes)]},
        "temperature": info["temperature"],
        "source": {"checkpoint": ckpt.name, "epoch": info.get("epoch"), "model": info["arch"]["name"]},
        "versions": {"mnistcli": __version__, "torch": torch.__version__},
    }
    if fmt == "onnx":
        meta["versions"]["onnx_opset"] = OPSET
    return json.loads(json.dumps(meta))  # exactly what reading it back gives


def _write_torchscript(wrapper: nn.Module, example: torch.Tensor, meta: dict[str, Any], path: Path) -> None:
    """Trace and save with the metadata as an extra file of the archive."""
    with warnings.catch_warnings(), torch.no_grad():
        # shape tests on C, H, W become constants: the input contract fixes them, and the check covers batch sizes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit announces its deprecation on every call
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={META_FILE: json.dumps(meta)})


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, meta: dict[str, Any], path: Path) -> None:
    """torch.export-based ONNX export (torch's default exporter) with a dynamic batch axis; metadata as a
    metadata_props entry; weights inside the one file."""
    onnx = require("onnx", "onnx", "exporting to ONNX")
    with warnings.catch_warnings():
        # torch.export's own pytree code trips torch's deprecation of LeafSpec (seen with torch 2.13): nothing a user
        # can change; any other warning still shows
        warnings.filterwarnings("ignore", r"isinstance\(treespec, LeafSpec\) is deprecated", FutureWarning)
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    path.write_bytes(proto.SerializeToString())


def _check_file(
    exported: ExportedModel, meta: dict[str, Any], images: torch.Tensor, reference: torch.Tensor
) -> dict[str, Any]:
    """The written file's metadata as written, and its probabilities as PyTorch's."""
    if exported.meta != meta:
        raise UserError(f"{exported.path}: the metadata read back differs from the metadata written")
    runtime = "onnxruntime" if exported.model_format == "onnx" else "torch.jit"
    version = require("onnxruntime", "onnx").__version__ if runtime == "onnxruntime" else torch.__version__
    return {"runtime": f"{runtime} {version}", **compare(exported.probabilities, images, reference)}


def compare(
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    reference: torch.Tensor,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Run `probabilities` over the images at each batch size; the largest |difference| from `reference` and the
    top-1 agreement. Beyond `tolerance`, or any top-1 that differs, is a UserError."""
    n, want = len(images), reference.argmax(1)
    sizes = sorted({min(size, n) for size in CHECK_BATCHES} | {n})
    worst, agree = 0.0, n
    for size in sizes:
        got = torch.cat([probabilities(images[i : i + size]) for i in range(0, n, size)])
        if got.shape != reference.shape:
            raise UserError(f"export check failed: output shape {tuple(got.shape)}, expected {tuple(reference.shape)}")
        diff = (got.double() - reference.double()).abs().nan_to_num(nan=float("inf")).max().item()
        worst, agree = max(worst, diff), min(agree, int((got.argmax(1) == want).sum()))
    result = {"images": n, "max_abs_diff": worst, "top1_agree": agree, "batch_sizes": sizes, "tolerance": tolerance}
    if worst > tolerance or agree < n:
        raise UserError(
            f"export check failed: max |probability difference| {worst:.3g} (allowed {tolerance:g}), top-1 agrees "
            f"on {agree}/{n} images, batch sizes {', '.join(map(str, sizes))}; no file was written"
        )
    return result


def publish_checked(target: Path, write: Callable[[Path], None], check: Callable[[Path], dict]) -> dict[str, Any]:
    """Write to a temporary name in the target's folder, check that file, then give it its name without replacing
    any file; a failed write or check removes the temporary file, so nothing is left behind."""
    clean_stale_temps(target)  # what an export killed mid-write left
    tmp = temp_path(target)
    try:
        try:
            tmp.unlink(missing_ok=True)  # this process's own leftover
            open_new(tmp).close()  # the name is ours, a plain new file, before the exporter opens it
            write(tmp)
        except (OSError, RuntimeError) as exc:  # torch's zip writer wraps a full disk in a RuntimeError
            if not isinstance(exc, OSError) and space_errno(exc) is None:
                raise
            raise write_error(target, exc if isinstance(exc, OSError) else OSError(space_errno(exc), "")) from None
        result = check(tmp)
        publish_new(tmp, target, f"{target}: a file of that name appeared while exporting; it was not replaced")
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _write_sidecar(sidecar: Path, target: Path, meta: dict[str, Any], check: dict[str, Any]) -> None:
    """FILE.json beside the file: its metadata, sha256 and check; the exported file goes too if this fails."""
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    text = json.dumps({**meta, "file": target.name, "sha256": digest, "check": check}, indent=2) + "\n"
    try:
        create_new(sidecar, text.encode("utf-8"))
    except BaseException as exc:
        target.unlink(missing_ok=True)  # ours, published a moment ago: whole or nothing
        if isinstance(exc, FileExistsError):
            raise UserError(f"{sidecar}: a file of that name appeared while exporting; it was not replaced") from None
        if isinstance(exc, OSError):
            raise write_error(sidecar, exc) from None
        raise
