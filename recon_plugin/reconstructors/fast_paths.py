"""Inference fast paths for RGANCS: bf16 autocast, channels_last, oneDNN-blocked convolutions, torch.compile,
CUDA graphs.

A fast path is written as ``"fp32"`` (none) or flags joined by ``+``, e.g.
``"bf16+channels_last"``; ``"auto"`` picks the device's default. Under bf16
only the proximal's residual blocks (its 3x3 convolutions, nearly all of its arithmetic) run in bf16: the 1x1
projection of the image and the 1x1 head stay in fp32 (:class:`Fp32Step`), and A, A^H and the data-consistency
steps in complex64 (:class:`~recon_plugin.model.precision.FullPrecisionOperator`). ``mkldnn`` (CPU, fp32)
runs each proximal's convolutions on oneDNN tensors in their blocked layout, converted once per proximal call.
Every path is checked against fp32 by tests (image SNR within ``SNR_TOLERANCE_DB``).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, fields
from typing import Any

import torch

from .. import cpu_features
from ..errors import FastPathError
from ..model import RecurrentProximalNet
from ..model.precision import FullPrecisionOperator
from ..model.proximal import ResNetProximal
from ..physics import SenseOperator

#: A fast path that moves the image SNR by more than this (dB) against fp32 is a bug.
SNR_TOLERANCE_DB = 0.05


@dataclass(frozen=True)
class FastPath:
    """Which inference optimisations are on."""

    bf16: bool = False
    channels_last: bool = False
    mkldnn: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def name(self) -> str:
        """``"fp32"`` or the flags joined by ``+``."""
        on = [f.name for f in fields(self) if getattr(self, f.name)]
        return "+".join(on) if on else "fp32"

    @classmethod
    def parse(cls, text: str, device: torch.device) -> FastPath:
        """Parse ``"auto"``, ``"fp32"`` or ``flag+flag``; FastPathError on unknown flags or impossible ones."""
        text = (text or "auto").strip().lower()
        if text == "auto":
            return default_fast_path(device)
        if text == "fp32":
            return cls()
        known = {f.name for f in fields(cls)}
        flags = [t.strip() for t in text.split("+") if t.strip()]
        unknown = sorted(set(flags) - known)
        if unknown:
            raise FastPathError(
                f"unknown fast path {', '.join(unknown)!s}; use 'auto', 'fp32' or a '+'-joined subset of "
                + ", ".join(sorted(known))
            )
        path = cls(**{flag: True for flag in flags})
        path.check(device)
        return path

    def check(self, device: torch.device) -> None:
        """FastPathError where this path cannot run on ``device``."""
        if self.cuda_graphs and device.type != "cuda":
            raise FastPathError(f"cuda_graphs needs a CUDA device, not {device}")
        if self.mkldnn:
            if device.type != "cpu" or not torch.backends.mkldnn.is_available():
                raise FastPathError(f"mkldnn needs a CPU build of torch with oneDNN, not {device}")
            if self.bf16 or self.channels_last or self.compile:
                raise FastPathError("mkldnn is a path of its own (fp32 oneDNN layouts); do not combine it")


#: Defaults per device type. CUDA: fp32. On an H200 the 10x1x32 default is bound by kernel launches (0.3-0.5 % of
#: the bf16 peak): bf16 and NHWC were no faster there, and bf16 moved the 256x256 8-coil SNR by 0.052 dB, beyond
#: the tolerance (docs/performance.md); compile and CUDA graphs are opt-in because their first call compiles
#: (seconds to minutes) and would land on the first exam.
#: CPU with native bf16 (AVX512-BF16 or AMX): bf16 in NHWC, measured 2.5x faster than fp32 and within the
#: SNR tolerance (docs/performance.md); other CPUs (bf16 emulated there): fp32 convolutions on oneDNN's blocked
#: layout, measured 1.9-2.1x faster per proximal than plain fp32 on an AVX2-only EPYC.
DEFAULTS = {
    "cuda": FastPath(),
    "cpu_bf16": FastPath(bf16=True, channels_last=True),
    "cpu": FastPath(mkldnn=True),
}


def default_fast_path(device: torch.device) -> FastPath:
    """The default fast path for ``device``."""
    if device.type == "cuda":
        return DEFAULTS["cuda"]
    if cpu_features.native_bf16():
        return DEFAULTS["cpu_bf16"]
    return DEFAULTS["cpu"] if torch.backends.mkldnn.is_available() else FastPath()


class _DenseStep(torch.nn.Module):
    """A module without a oneDNN kernel, run on the dense copy of a oneDNN tensor."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to_dense()).to_mkldnn()


class Fp32Step(torch.nn.Module):
    """A module run in fp32 with autocast off, inside a bf16 proximal.

    Rounding the image to bf16 on its way into the projection, and the head's correction on its way out, made most
    of the bf16 path's error: on eight noise-free 256x256 8-coil slices (34-35 dB) the seventh to ninth campaign
    stages lost 0.02-0.06 dB mean SNR against fp32 with the whole proximal in bf16; the ninth lost 0.009 dB with
    these two 1x1 steps in fp32, for 10-18 % more time per slice.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


class MkldnnProximal(torch.nn.Module):
    """A ResNetProximal whose convolutions run on oneDNN tensors (inference only, CPU, fp32).

    The input is converted to oneDNN's blocked layout once, the convolutions, ReLUs and the residual sums stay
    there (ReLUs and residual sums in place: a fresh 32-map oneDNN tensor per ReLU cost half a convolution
    here), and the head's output comes back dense before the global skip and the output activation.
    """

    def __init__(self, proximal: ResNetProximal) -> None:
        super().__init__()
        from torch.utils import mkldnn

        body = copy.deepcopy(torch.nn.Sequential(proximal.project, proximal.blocks, proximal.head))
        for block in body[1]:  # oneDNN has no instance norm: that one step runs dense
            for name, child in list(block.named_children()):
                if isinstance(child, torch.nn.InstanceNorm2d):
                    setattr(block, name, _DenseStep(child))
        self.body = mkldnn.to_mkldnn(body)
        self.finish = proximal.finish  # the global skip and output activation, shared with the dense proximal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        project, blocks, head = self.body
        h = project(x.contiguous().to_mkldnn())
        for block in blocks:  # the ResidualBlock's arithmetic, with the ReLUs and the sum in place where allowed
            r = block.conv1(torch.relu(block.bn1(h)))
            h = block.conv2(torch.relu_(block.bn2(r))).add_(h)
        for layer in head:
            h = torch.relu_(h) if isinstance(layer, torch.nn.ReLU) else layer(h)
        return self.finish(h.to_dense(), x)


class FastModel:
    """A RecurrentProximalNet prepared for one fast path (the caller's model is never modified)."""

    def __init__(self, model: RecurrentProximalNet, path: FastPath, device: torch.device) -> None:
        path.check(device)
        self.path, self.device = path, device
        net = copy.deepcopy(model).to(device).eval()
        if path.mkldnn:
            net.proximals = torch.nn.ModuleList(MkldnnProximal(p) for p in net.proximals)
        if path.bf16:  # the 1x1 projection and head in fp32, the residual blocks in bf16 (Fp32Step)
            for proximal in net.proximals:
                proximal.project, proximal.head = Fp32Step(proximal.project), Fp32Step(proximal.head)
        if path.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if path.compile or path.cuda_graphs:
            mode = "reduce-overhead" if path.cuda_graphs else "default"
            net.proximals = torch.nn.ModuleList(torch.compile(p, mode=mode, dynamic=False) for p in net.proximals)
        self.net = net

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.path.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, y: torch.Tensor, op: SenseOperator) -> torch.Tensor:
        """The final image (complex64) for measurements ``y`` under ``op``."""
        if self.path.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            x, _ = self.net(y, FullPrecisionOperator(op, self.device.type) if self.path.bf16 else op)
        return x.to(torch.complex64)
