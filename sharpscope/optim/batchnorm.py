"""BatchNorm running statistics for two-pass optimizers: keep the first pass's update only.

SAM-family steps run two forward passes in training mode. The official SAM code keeps the
running-average state produced by the *first* (unperturbed) pass and discards the second pass's
update. :func:`frozen_bn_stats` gives that behaviour in any loop:

    >>> import torch
    >>> from sharpscope.optim import SAM
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    >>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, model=model)
    >>> x, y, loss_fn = torch.randn(16, 3), torch.randn(16, 1), torch.nn.MSELoss()
    >>> loss_fn(model(x), y).backward()          # pass 1: batch statistics, running stats updated
    >>> opt.first_step(zero_grad=True)
    >>> after_first = model[1].running_mean.clone()
    >>> with frozen_bn_stats(model):             # pass 2: batch statistics, running stats untouched
    ...     loss_fn(model(x), y).backward()
    >>> opt.second_step()
    >>> torch.equal(model[1].running_mean, after_first)
    True

Mechanism: for every BatchNorm layer (``_BatchNorm``, including ``SyncBatchNorm``) with running
statistics that is in training mode, ``track_running_stats`` is switched off for the duration of
the block. In training mode such a layer still normalises with the batch statistics (the forward
is unchanged) but neither ``running_mean``/``running_var`` nor ``num_batches_tracked`` is
written, so the state after the block is bit-for-bit the state before it, at no copying cost.
This also covers ``momentum=None`` (cumulative averaging), for which the "momentum = 0" trick of
other ports does not work. Other norm layers with running statistics (InstanceNorm with
``track_running_stats=True``) ignore that switch in training mode, so their buffers are copied
before the block and written back after it.

A step that fails part-way (its second pass raises, Ctrl-C) must leave no trace either: the first
pass has already updated the running statistics. :func:`running_stats_restored_on_error` copies
them before the step and writes them back if it raises, so a failed step leaves weights *and*
statistics as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

__all__ = ["frozen_bn_stats", "disable_running_stats", "enable_running_stats", "running_stats_restored_on_error"]

_FLAG = "_sharpscope_frozen_running_stats"
_SNAPSHOT = "_sharpscope_running_stats_snapshot"


def disable_running_stats(model: nn.Module) -> None:
    """Stop running-stat updates of every training-mode BatchNorm/InstanceNorm layer of ``model``.

    Undo with :func:`enable_running_stats`. Layers in eval mode are left alone (they do not
    update their statistics anyway). Calling it twice is harmless.
    """
    for module in model.modules():
        if (
            isinstance(module, _NormBase)
            and module.training
            and module.track_running_stats
            and module.running_mean is not None
            and not getattr(module, _FLAG, False)
        ):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = False
            else:
                snapshot = {
                    name: buf.detach().clone()
                    for name, buf in module.named_buffers(recurse=False)
                    if buf is not None
                }
                setattr(module, _SNAPSHOT, snapshot)
            setattr(module, _FLAG, True)


def enable_running_stats(model: nn.Module) -> None:
    """Restore the layers switched off by :func:`disable_running_stats` (and only those)."""
    for module in model.modules():
        if getattr(module, _FLAG, False):
            snapshot: dict[str, torch.Tensor] | None = getattr(module, _SNAPSHOT, None)
            if snapshot is None:
                module.track_running_stats = True  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
            else:
                with torch.no_grad():
                    for name, saved in snapshot.items():
                        getattr(module, name).copy_(saved)
                delattr(module, _SNAPSHOT)
            delattr(module, _FLAG)


@contextmanager
def frozen_bn_stats(model: nn.Module | None) -> Iterator[None]:
    """Context in which ``model``'s norm layers use batch statistics but update no running stats.

    ``None`` is accepted and does nothing, so optimizers can call it unconditionally.
    """
    if model is None:
        yield
        return
    disable_running_stats(model)
    try:
        yield
    finally:
        enable_running_stats(model)


@contextmanager
def running_stats_restored_on_error(model: nn.Module | None) -> Iterator[None]:
    """Context that puts every norm layer's running statistics (``running_mean``, ``running_var``,
    ``num_batches_tracked``) back to their values at entry if the block raises (any exception,
    ``KeyboardInterrupt`` included); on success it changes nothing. ``None`` does nothing.

    Cost: one copy of the statistics per block (two vectors per layer, small next to the weights).
    """
    if model is None:
        yield
        return
    saved = [(buf, buf.detach().clone()) for module in model.modules()
             if isinstance(module, _NormBase) and module.running_mean is not None
             for buf in module.buffers(recurse=False) if buf is not None]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        raise
