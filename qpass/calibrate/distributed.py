"""Calibrate on many ranks: each runs its shard, then all ranks merge their observers."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.fx as fx

from qpass.calibrate.calibrate import CalibrationDataError, calibrate
from qpass.observe.distributed import all_reduce_observers
from qpass.observe.module import ObserverModule
from qpass.state import get_state

log = logging.getLogger(__name__)


def calibrate_distributed(
    prepared: fx.GraphModule, batches: Iterable[Any], group: Any = None, progress: bool = False
) -> fx.GraphModule:
    """``qpass.calibrate`` on this rank's shard, then merge every observer across ``group``.

    Collective: every rank calls it on the same prepared model. Afterwards each rank holds the
    same observer state, the merge of all shards in rank order (for MinMax exactly the state
    of one process calibrated on all of them), and ``calibrated_batches`` counts every rank's
    batches. A rank with an empty shard contributes nothing but still takes part.
    """
    state = get_state(prepared, "calibrate_distributed")
    if isinstance(batches, torch.Tensor):
        calibrate(prepared, batches)  # raises its "pass a list of batches" error
    it = iter(batches)
    first = next(it, None)
    before = state.calibrated_batches
    if first is None:
        log.warning("calibrate_distributed: rank %d has no calibration batches",
                    dist.get_rank(group))
    else:
        calibrate(prepared, itertools.chain([first], it), progress=progress)
    modules = sorted(
        ((name, m) for name, m in prepared.named_children() if isinstance(m, ObserverModule)),
        key=lambda item: item[0])
    all_reduce_observers([m.observer for _, m in modules], group=group)
    seen = torch.tensor([state.calibrated_batches - before], dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        seen = seen.cuda()
    dist.all_reduce(seen, group=group)
    if int(seen.item()) == 0:
        raise CalibrationDataError(
            "calibrate_distributed: no rank had calibration batches; give each rank a "
            "non-empty shard (e.g. batches[rank::world_size])")
    state.calibrated_batches = before + int(seen.item())
    state.phase = "calibrated"
    return prepared
