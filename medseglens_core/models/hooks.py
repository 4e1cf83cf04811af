"""Capture or replace the activation at a named hook point, as context managers.

Both register a forward hook on ``model.hook_module(hook)`` with ``prepend=True`` (so it runs
before any hook a library installed on that module, see DESIGN section 4) and remove it on
exit, also when the body raises::

    with capture(model, "stage3") as cap:
        model(x)
    h = cap.value                      # (B, C, h, w)

    with replace(model, "stage3", torch.zeros_like(h)):
        edited = model(x)
    with replace(model, "bottleneck", lambda h: 2 * h):
        scaled = model(x)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from medseglens_core.errors import InvalidInput
from medseglens_core.models.base import SegModel


@dataclass
class Captured:
    """Activations seen at a hook point, one entry per forward call (e.g. per slice batch).

    Attributes:
        values: the activations ``(B, C, h, w)`` in call order (detached unless asked otherwise).
    """

    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def value(self) -> torch.Tensor:
        """The activation of the last forward call; raises if the model has not run."""
        if not self.values:
            raise InvalidInput("no activation captured: run the model inside the capture() block")
        return self.values[-1]


@contextmanager
def capture(model: SegModel, hook: str, *, detach: bool = True) -> Iterator[Captured]:
    """Record the output of hook point ``hook`` on every forward call inside the block.

    Args:
        model: the segmentation model.
        hook: one of ``model.hook_points``.
        detach: store detached tensors (default); ``False`` keeps the autograd graph.
    """
    captured = Captured()

    def _hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured.values.append(output.detach() if detach else output)

    handle = model.hook_module(hook).register_forward_hook(_hook, prepend=True)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def replace(
    model: SegModel,
    hook: str,
    tensor_or_fn: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[None]:
    """Replace the output of hook point ``hook`` during every forward call inside the block.

    Args:
        model: the segmentation model.
        hook: one of ``model.hook_points``.
        tensor_or_fn: a tensor of exactly the activation's shape ``(B, C, h, w)``, or a function
            mapping the original activation to its replacement (same shape).
    """

    def _hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        new = tensor_or_fn(output) if callable(tensor_or_fn) else tensor_or_fn
        if not isinstance(new, torch.Tensor) or new.shape != output.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise InvalidInput(
                f"replacement at {hook} must be a tensor of shape {tuple(output.shape)}, got {got}"
            )
        return new.to(device=output.device, dtype=output.dtype)

    handle = model.hook_module(hook).register_forward_hook(_hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()
