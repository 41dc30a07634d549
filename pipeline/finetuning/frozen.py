"""Frozen lower layers computed once: the output of the last frozen layer group, stored
per cached view (and its mirror), from which a phase trains the layers above it.

When a phase trains only the top groups of an image backbone and nothing changes the
input between epochs (no shift, mixup or cutmix; flips are stored both ways), the frozen
groups give the same output every epoch. The phase stores the output of the last frozen
group's module (``blocks.4`` of an EfficientNet, ``layer3`` of a ResNet) and runs the
model from there, with a forward hook that puts the stored rows in place of that
module's output. What comes before the module still runs, on one row only (the hook
needs a forward to hook into); a model whose top reads anything else from below the cut
(a skip connection past it) is caught by :func:`check_top` on real rows, and the phase
then runs the whole network as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.contracts.cachefiles import ArraySplit
from pipeline.finetuning.engine import autocast, inference_batches
from pipeline.finetuning.models import LayerGroup
from pipeline.modality import BatchAdapter


class _Stop(Exception):
    """Raised by the capture hook: nothing above the cut needs to run."""


def cut_module(model: nn.Module, groups: list[LayerGroup], first_trained: int) -> str | None:
    """The module whose output feeds the first trained group: the one module that holds
    every parameter of the last frozen group (their longest common dotted prefix), or
    None when no single module does (``conv_stem+bn1``) or nothing below is frozen."""
    if first_trained < 1:
        return None
    params = groups[first_trained - 1].params
    parts = [name.split(".")[:-1] for name in params]
    prefix: list[str] = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        prefix.append(level[0])
    name = ".".join(prefix)
    owned = {f"{name}.{n}" for n, _ in model.get_submodule(name).named_parameters()} \
        if name else set()
    return name if name and owned == set(params) else None


@torch.inference_mode()
def frozen_outputs(model: nn.Module, cut: str, data: ArraySplit, *, inputs: BatchAdapter,
                   device: torch.device, batch_size: int, amp: bool = False,
                   mirror: bool = False) -> torch.Tensor:
    """(N, ...) output of module ``cut`` for every row, in row order, the model in eval
    mode (the frozen groups are; the caller restores the modes); the forward stops there.
    ``mirror``: of the left-right mirrored rows."""
    module, captured = model.get_submodule(cut), []

    def hook(_: nn.Module, __: Any, out: torch.Tensor) -> None:
        captured.append(out.float())
        raise _Stop

    handle = module.register_forward_hook(hook)
    model.eval()
    stream, order = inference_batches(data, batch_size, inputs)
    try:
        for rows, _ in stream:
            x = inputs.to_input(rows, device)
            try:
                with autocast(device, amp):
                    model(x.flip(-1) if mirror else x)
            except _Stop:
                pass
    finally:
        handle.remove()
    out = torch.cat(captured)
    return out[torch.from_numpy(np.argsort(order)).to(out.device)]


class TopForward(nn.Module):
    """The model above module ``cut``, fed (B, ...) stored outputs of that module: a
    forward hook replaces the module's output, computed from one ``probe`` row, by them."""

    def __init__(self, model: nn.Module, cut: str, probe: torch.Tensor) -> None:
        super().__init__()
        self.model, self.cut, self.probe = model, cut, probe[:1]

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        def stored(_: nn.Module, __: Any, out: torch.Tensor) -> torch.Tensor:
            x = states.to(out.dtype)  # the memory format the module gives: same kernels
            if x.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
            return x

        handle = self.model.get_submodule(self.cut).register_forward_hook(stored)
        try:
            return self.model(self.probe)
        finally:
            handle.remove()


@torch.inference_mode()
def check_top(model: nn.Module, cut: str, x: torch.Tensor) -> torch.Size | None:
    """The per-row shape of ``cut``'s output when the model run from it gives the logits
    of the whole model on the model-input batch ``x``, else None (one forward pass of
    ``x``, eval mode; the caller restores modes)."""
    model.eval()
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(cut).register_forward_hook(
        lambda _, __, out: captured.append(out))
    try:
        whole = model(x)
    finally:
        handle.remove()
    top = TopForward(model, cut, x)(captured[0])
    same = whole.shape == top.shape and torch.allclose(whole, top, rtol=1e-4, atol=1e-5)
    return captured[0].shape[1:] if same else None


@torch.inference_mode()
def head_inputs_from(model: nn.Module, head: nn.Module, cut: str, stored: torch.Tensor,
                     probe: torch.Tensor, *, batch_size: int, device: torch.device,
                     amp: bool = False) -> torch.Tensor:
    """(N, D) float32 inputs of ``head`` computed from (N, ...) stored outputs of module
    ``cut`` (what :func:`pipeline.finetuning.engine.head_inputs` gives from the images),
    the model in eval mode; each forward stops at the head."""
    captured: list[torch.Tensor] = []

    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].float())
        raise _Stop

    handle = head.register_forward_pre_hook(hook)
    top = TopForward(model, cut, probe)
    model.eval()
    try:
        for chunk in stored.split(batch_size):
            try:
                with autocast(device, amp):
                    top(chunk)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.zeros((0, 0), device=device)
