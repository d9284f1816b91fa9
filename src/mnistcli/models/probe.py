"""Check a network before any work: build it on the meta device (shapes only: no memory, no arithmetic), pass a
small batch of the run's input shape through it, and estimate the memory training it needs."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from ..utils.errors import UserError
from .families import build_model

GIB = 2**30
KERNEL = re.compile(r"padded input size per channel: \((\d+) x (\d+)\)")


@dataclass(frozen=True)
class ModelSize:
    """What a network holds, and what one training batch of it keeps for backward (float32 estimates)."""

    parameters: int  # number of parameter elements
    param_bytes: int  # bytes of the parameters
    activation_bytes: int  # bytes of every leaf module's output for one batch: what backward keeps
    output_shape: tuple[int, ...]  # (batch, classes)


class _Tracer:
    """Names each module as it is attached to its parent, follows the one running, and sums leaf outputs."""

    def __init__(self) -> None:
        self.parents: dict[nn.Module, tuple[nn.Module, str]] = {}
        self.running: list[tuple[nn.Module, tuple[int, ...]]] = []  # (module, shape of its input), outermost first
        self.counting = False  # sum activations (the probe's own batch, not a constructor's sizing pass)
        self.activation_bytes = 0

    def attached(self, parent: nn.Module, name: str, child: nn.Module | None) -> None:
        """Module registration hook: remember where a module sits."""
        if child is not None:
            self.parents[child] = (parent, name)

    def entering(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Forward pre-hook: the module about to run (and fail, if one does)."""
        first = args[0] if args else None
        self.running.append((module, tuple(first.shape) if isinstance(first, torch.Tensor) else ()))

    def left(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """Forward hook: the module ran; a leaf's new output is kept for backward (an in-place one is not new)."""
        self.running.pop()
        if self.counting and next(module.children(), None) is None:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            self.activation_bytes += sum(
                t.numel() * t.element_size()
                for t in outputs
                if isinstance(t, torch.Tensor) and not any(t is a for a in args)
            )

    def name(self, module: nn.Module) -> str:
        """The module's dotted path in the network, e.g. 'features.6'."""
        parts = []
        while module in self.parents:
            module, part = self.parents[module]
            parts.append(part)
        return ".".join(reversed(parts))

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """Install the hooks for every module, including those a constructor runs to size itself (which per-module
        hooks could not see), and remove them afterwards."""
        handles = [
            module_hooks.register_module_module_registration_hook(self.attached),
            module_hooks.register_module_forward_pre_hook(self.entering),
            module_hooks.register_module_forward_hook(self.left),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _side(value: Any) -> str:
    """A kernel or window size as HxW."""
    h, w = (value, value) if isinstance(value, int) else tuple(value)[:2]
    return f"{h}x{w}"


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _why(exc: Exception, module: nn.Module, seen: tuple[int, ...], cnn: bool, sizing: bool) -> str:
    """What went wrong in the layer and what to change, in the user's terms where torch's reason is known.

    `sizing`: the failure came from the constructor's own one-image pass that sizes the dense layers."""
    text = _first_line(exc)
    fmap = f"{seen[-2]}x{seen[-1]}" if len(seen) == 4 else "x".join(map(str, seen[1:]))
    shrink = "use fewer pooling stages (fewer model.channels or a larger model.pool_every) or " if cnn else ""
    padded = KERNEL.search(text)
    if padded and isinstance(module, nn.Conv2d):
        extra = "" if f"{padded[1]}x{padded[2]}" == fmap else f" ({padded[1]}x{padded[2]} padded)"
        hint = "lower model.kernel_size or the number of pooling stages, or " if cnn else ""
        kernel = _side(module.kernel_size)
        return f"gets a {fmap} feature map{extra} but its kernel is {kernel}; {hint}raise data.image_size"
    if "Output size is too small" in text and isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        window = _side(module.kernel_size)
        return f"gets a {fmap} feature map, too small for its {window} window; {shrink}raise data.image_size"
    if "Expected more than 1 value per channel when training" in text:
        if sizing:  # one image through a 1x1 map leaves batch norm a single value per channel
            return (
                f"gets a {fmap} feature map, too small to size the network on one image; {shrink}raise data.image_size"
            )
        return f"sees one value per channel in a training batch of {seen[0]} ({fmap}); raise data.batch_size"
    return f"fails: {text}"


PROBE_BATCH = 2  # images the probe passes: batch norm in training needs two; activations scale with the batch


def probe_model(
    arch: dict[str, Any], in_shape: tuple[int, int, int], batch_size: int, where: str = "model"
) -> ModelSize:
    """Build `arch` on the meta device (shapes only: no memory, no arithmetic), then, when its weights fit in memory,
    give it uninitialised CPU memory and run a training-mode batch of `in_shape` through it (min(batch_size, 2)
    images; activations scaled to the batch). A real pass rather than one on the meta device: torch's meta kernels
    import its compiler stack, a second or so, which only a network too large to hold still pays (its whole batch
    passes on the meta device). A failure is one UserError line naming `where` and the failing layer."""
    tracer, shape = _Tracer(), "x".join(map(str, in_shape))
    probe = min(batch_size, PROBE_BATCH)
    with tracer.hooked():
        try:
            with torch.device("meta"):
                model = build_model(arch)
            params = list(model.parameters())
            param_bytes = sum(p.numel() * p.element_size() for p in params)
            available = available_bytes(torch.device("cpu"))
            if available is not None and param_bytes * 2 > available:  # too large to hold: shapes only, on meta
                probe, x = batch_size, torch.empty(batch_size, *in_shape, device="meta")
            else:  # values are whatever the memory held: only shapes matter here
                model, x = _on_cpu(model), torch.zeros(probe, *in_shape)
            model.train()
            tracer.counting = True
            with torch.no_grad():
                out = model(x)
        except UserError:
            raise
        except Exception as exc:  # torch's shape checks raise RuntimeError, ValueError, IndexError...
            if not tracer.running:
                raise UserError(f"{where}: cannot be built for a {shape} input: {_first_line(exc)}") from None
            module, seen = tracer.running[-1]
            layer = f"layer {tracer.name(module) or '(the network)'} ({type(module).__name__})"
            cnn = arch["family"] == "cnn"
            raise UserError(
                f"{where}: does not fit a {shape} input: {layer} {_why(exc, module, seen, cnn, not tracer.counting)}"
            ) from None
    return ModelSize(
        parameters=sum(p.numel() for p in params),
        param_bytes=param_bytes,
        activation_bytes=tracer.activation_bytes * batch_size // probe,
        output_shape=(batch_size, *out.shape[1:]),
    )


def _on_cpu(model: nn.Module) -> nn.Module:
    """Give a meta-device model uninitialised CPU tensors of the same shapes, in place (Module.to_empty does the
    same through torch's reference kernels, which import its compiler stack)."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype), param.requires_grad))
        for name, buffer in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.empty(buffer.shape, dtype=buffer.dtype))
    return model


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (Linux), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes(device: torch.device) -> int | None:
    """Memory a run can still take: free CUDA memory on a GPU, available RAM on the CPU; None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = _meminfo_available()
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every system names these
        return None


def check_fits(size: ModelSize, device: torch.device, where: str = "model", optimizer_slots: int = 2) -> None:
    """Refuse, in one UserError line, a model whose training would not fit in the device's available memory:
    weights, gradients and `optimizer_slots` optimizer tensors per parameter (Adam: 2), plus one batch's
    activations."""
    params = size.param_bytes * (2 + optimizer_slots)
    need = params + size.activation_bytes
    available = available_bytes(device)
    if available is None or need <= available:
        return
    place = "this machine" if device.type == "cpu" else str(device)
    batch = size.output_shape[0] if size.output_shape else "?"
    hint = (
        "make the model smaller (model.hidden, model.channels)"
        if params >= size.activation_bytes
        else "lower data.batch_size (or data.image_size)"
    )
    raise UserError(
        f"{where}: needs about {need / GIB:.1f} GiB to train (parameters {params / GIB:.1f} GiB incl. gradients "
        f"and optimizer state, activations {size.activation_bytes / GIB:.1f} GiB per batch of {batch}) but "
        f"{place} has {available / GIB:.1f} GiB available; {hint}"
    )
