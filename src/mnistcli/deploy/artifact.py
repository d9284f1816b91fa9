"""Exported models (`mnistcli export`): their embedded metadata, read and checked, and running them: TorchScript
through torch.jit.load, ONNX through onnxruntime.

A TorchScript file is a program (torch.jit.load runs the TorchScript code inside it): its metadata is read from the
zip archive first, so a file that is not an mnistcli export is refused before any of its code is loaded. ONNX files
hold a graph of operators and run no Python code.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.input_spec import InputSpec
from ..utils.errors import UserError
from ..utils.extras import require
from ..utils.names import class_names_problem

FORMAT = "mnistcli-export"  # the marker every export's metadata carries
FORMAT_VERSION = 1
log = logging.getLogger(__name__)

META_FILE = "mnistcli.json"  # TorchScript: the extra file (in the archive's extra/ folder) holding the metadata
META_KEY = "mnistcli"  # ONNX: the metadata_props key holding the same JSON
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
INPUT_KINDS = ("uint8", "float")  # uint8 pixels 0..255, or float32 pixels in [0, 1]


@dataclass
class ExportedModel:
    """An exported file, loaded: its metadata, input spec and classes, and how to run it."""

    path: Path
    model_format: str  # "torchscript" or "onnx"
    meta: dict[str, Any]
    spec: InputSpec
    classes: list[str]
    run: Callable[[torch.Tensor], torch.Tensor]  # a batch as the file takes it -> float32 probabilities, CPU

    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stored uint8 pixels (N, C, H, W) -> class probabilities (N, classes), float32 on the CPU; outputs that
        are not probabilities (negative, above 1, not summing to 1, not finite) are refused, not printed."""
        out = self.run(pixels.float().div(255) if self.meta["input"]["kind"] == "float" else pixels)
        problem = not_probabilities(out)
        if problem:
            raise UserError(f"{self.path}: its outputs are not probabilities ({problem}); export the model again")
        return out


PROBABILITY_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within about 1e-6; exports are checked to 1e-4


def not_probabilities(out: torch.Tensor) -> str | None:
    """What is wrong with a batch of outputs as class probabilities, or None: each row finite, each value in [0, 1]
    and each row summing to 1."""
    if out.dim() != 2 or not out.numel():
        return f"shape {list(out.shape)}"
    if not bool(torch.isfinite(out).all()):
        return "values that are not finite"
    low, high = float(out.min()), float(out.max())
    sums = out.double().sum(dim=1)
    worst = float((sums - 1).abs().max())
    if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE or worst > PROBABILITY_TOLERANCE:
        return f"values from {low:.4g} to {high:.4g}, rows summing to {float(sums.min()):.4g}..{float(sums.max()):.4g}"
    return None


# Operators that repeat a sub-graph a number of times the file chooses: an image classifier needs none, and a file
# holding one could run for ever (a Loop of 2^62 steps is a 27 kB file); refused before anything runs.
ONNX_LOOPS = frozenset({"Loop", "Scan"})
TORCHSCRIPT_LOOPS = frozenset({"prim::Loop"})


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """Load a file `mnistcli export` wrote (TorchScript or ONNX, told apart by content); anything else is one line."""
    path = Path(path)
    _check_regular_file(path)
    if zipfile.is_zipfile(path):
        return _torchscript(path, torch.device(device))
    return _onnx(path)


def parse_metadata(text: str, path: Path) -> tuple[dict[str, Any], InputSpec]:
    """The embedded metadata as a dict and the typed input spec; a missing or inconsistent field is one line."""
    try:
        meta = json.loads(text)
    except ValueError:
        raise UserError(f"{path}: its mnistcli metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an mnistcli export (no '{FORMAT}' marker in its metadata)")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(f"{path}: export format version {version!r}; this mnistcli reads 1 to {FORMAT_VERSION}")
    problem = class_names_problem(meta.get("classes"), "the metadata's classes")  # the checkpoint's rule
    if problem:
        raise UserError(f"{path}: {problem}")
    io = (meta.get("input"), meta.get("output"))
    if not all(isinstance(part, dict) and isinstance(part.get("name"), str) for part in io):
        raise UserError(f"{path}: the metadata's 'input' and 'output' must each name a tensor")
    if meta["input"].get("kind") not in INPUT_KINDS:
        kind = meta["input"].get("kind")
        raise UserError(f"{path}: input kind {kind!r} in the metadata; allowed: {', '.join(INPUT_KINDS)}")
    try:
        spec = InputSpec.from_dict(meta["input_spec"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UserError(f"{path}: the metadata's input_spec is incomplete ({type(exc).__name__}: {exc})") from None
    return meta, spec


def _check_regular_file(path: Path) -> None:
    """Only an existing regular file is read: a folder or a FIFO is one line, not a traceback or a hang."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise UserError(f"{path}: model file not found") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder; give a file written by `mnistcli export`")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file; give a file written by `mnistcli export`")


def _zip_metadata(path: Path) -> str:
    """The metadata inside a TorchScript archive, read as data before torch.jit.load runs anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            found = [name for name in names if name.endswith(f"/extra/{META_FILE}")]
            if found:
                return archive.read(found[0]).decode("utf-8")
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the archive ({exc})") from None
    if any(name.endswith("/data.pkl") for name in names) and not any("/code/" in name for name in names):
        raise UserError(f"{path}: a PyTorch checkpoint, not an exported model; give it as --ckpt, or export it first")
    raise UserError(
        f"{path}: not an mnistcli export (a zip archive without {META_FILE}); write one with `mnistcli export`"
    )


def _torchscript(path: Path, device: torch.device) -> ExportedModel:
    """A TorchScript export, on `device`."""
    meta, spec = parse_metadata(_zip_metadata(path), path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit announces its deprecation on every load
            module = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as exc:
        raise UserError(f"{path}: cannot load the TorchScript file ({_first_line(exc)})") from None
    loops = sorted({node.kind() for node in _ts_nodes(module.inlined_graph)} & TORCHSCRIPT_LOOPS)
    if loops:
        raise UserError(
            f"{path}: its TorchScript code holds a loop ({', '.join(loops)}), which no exported classifier has; "
            "not run (an export of `mnistcli export` is traced: straight-line code)"
        )

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x.to(device)).float().cpu()

    return _checked(ExportedModel(path, "torchscript", meta, spec, meta["classes"], run))


def _ts_nodes(graph: Any) -> Any:
    """Every node of a TorchScript graph, those inside the blocks of control flow included."""
    for node in graph.nodes():
        yield node
        for block in node.blocks():
            yield from _ts_nodes(block)


def _onnx_ops(graph: Any) -> set[str]:
    """The operator types of an ONNX graph and of the sub-graphs its nodes hold (If's branches, Loop's body)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else list(attr.graphs):
                ops |= _onnx_ops(sub)
    return ops


def _check_onnx_ops(path: Path) -> None:
    """Refuse an ONNX file whose graph (or a function it defines) holds a loop, before onnxruntime runs it."""
    onnx = require("onnx", "onnx", f"{path}: reading an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX at all: onnxruntime's refusal below says so
        return
    ops = _onnx_ops(proto.graph)
    for function in proto.functions:
        ops |= {node.op_type for node in function.node}
    loops = sorted(ops & ONNX_LOOPS)
    if loops:
        raise UserError(
            f"{path}: its graph holds {', '.join(loops)}, an operator that repeats a sub-graph and that no exported "
            "classifier has; not run"
        )


def _onnx(path: Path) -> ExportedModel:
    """An ONNX export, run by onnxruntime on the CPU."""
    ort = require("onnxruntime", "onnx", f"{path}: running an ONNX model")
    _check_onnx_ops(path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own InvalidProtobuf, Fail, ... for files it cannot read
        reason = "" if "INVALID_PROTOBUF" in str(exc) else f" ({_first_line(exc)})"
        raise UserError(
            f"{path}: neither a TorchScript archive nor an ONNX model{reason}; give a file written by `mnistcli export`"
        ) from None
    text = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if text is None:
        raise UserError(f"{path}: an ONNX model without mnistcli metadata; write one with `mnistcli export`")
    meta, spec = parse_metadata(text, path)
    feed, fetch = meta["input"]["name"], meta["output"]["name"]
    _check_graph(path, meta, spec, session)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([fetch], {feed: x.cpu().numpy()})[0]).float()

    return _checked(ExportedModel(path, "onnx", meta, spec, meta["classes"], run))


def _check_graph(path: Path, meta: dict[str, Any], spec: InputSpec, session: Any) -> None:
    """The ONNX graph's own input and output (names, element type, fixed sizes) agree with its metadata."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    feed, fetch = meta["input"]["name"], meta["output"]["name"]
    if feed not in inputs or fetch not in outputs:
        graph = f"inputs {sorted(inputs)}, outputs {sorted(outputs)}"
        raise UserError(f"{path}: the metadata names input '{feed}' and output '{fetch}' but the graph has {graph}")
    want = "tensor(uint8)" if meta["input"]["kind"] == "uint8" else "tensor(float)"
    if inputs[feed].type != want:
        raise UserError(
            f"{path}: the metadata says {meta['input']['kind']} input but the graph takes {inputs[feed].type}"
        )
    _check_sizes(path, "input", inputs[feed].shape[1:], list(spec.stored))
    _check_sizes(path, "output", outputs[fetch].shape[1:], [len(meta["classes"])])


def _check_sizes(path: Path, what: str, graph: list[Any], expected: list[int]) -> None:
    """Sizes beyond the batch that the graph fixes (symbolic ones are checked by running it) match the metadata."""
    fixed = [g if isinstance(g, int) else None for g in graph]
    if len(graph) != len(expected) or any(g is not None and g != e for g, e in zip(fixed, expected)):
        shown = ", ".join(str(g) for g in graph)
        raise UserError(
            f"{path}: the graph's {what} is [batch, {shown}] but its metadata gives [batch, "
            f"{', '.join(map(str, expected))}]{' (one output per class name)' if what == 'output' else ''}; the "
            "file is inconsistent: export it again"
        )


def _checked(model: ExportedModel) -> ExportedModel:
    """Run the file once on a blank image: it must give one finite probability per class its metadata names.
    A sidecar FILE.json that says otherwise than the embedded metadata is named, and not used."""
    blank = torch.zeros((1, *model.spec.stored), dtype=torch.uint8)
    try:
        out = model.probabilities(blank)
    except UserError:
        raise
    except Exception as exc:  # a runtime's own error for an input the graph does not take
        raise UserError(
            f"{model.path}: does not run on the input its metadata describes ({_first_line(exc)})"
        ) from None
    if out.dim() != 2 or out.shape[1] != len(model.classes):
        raise UserError(
            f"{model.path}: its metadata names {len(model.classes)} classes but the model gives "
            f"{list(out.shape)} for one image; the file is inconsistent: export it again"
        )
    _compare_sidecar(model)
    return model


def _compare_sidecar(model: ExportedModel) -> None:
    """Warn, in one line, when FILE.json beside the file disagrees with the metadata inside it (which is used)."""
    sidecar = model.path.with_name(model.path.name + ".json")
    try:
        side = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no sidecar (or not one): the embedded metadata is all there is
    if not isinstance(side, dict):
        return
    differ = sorted(k for k, v in model.meta.items() if k != "versions" and side.get(k) != v)
    if differ:
        log.warning(
            "%s differs from the metadata inside %s (%s); the embedded metadata is used",
            *(sidecar, model.path.name, ", ".join(differ)),
        )


def _first_line(exc: BaseException) -> str:
    """An exception's message cut to one short line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
