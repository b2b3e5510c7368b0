"""Several processes on one machine, through Hugging Face Accelerate.

``accelerate launch --multi_gpu --num_processes N vae_data_pipeline_batch.py ...`` starts N copies
of the run. Each finds the same frames and windows, takes every N-th window still to do
(``todo[rank::N]``), reconstructs them on its own device (``cuda:<local rank>``; on a machine
without GPUs, all on the CPU over gloo) and writes their folders, which never collide. Process 0
prepares the output folder first (video frames, stale staging folders), and at the end waits for
the others and merges their run records into one ``run.json``. ``--use-accelerate`` goes through
the same code in a single process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


def launched_by_accelerate() -> bool:
    """Whether this process was started by ``accelerate launch`` (or torchrun with several
    processes)."""
    return (int(os.environ.get("WORLD_SIZE", "1")) > 1
            or any(k.startswith("ACCELERATE_") for k in os.environ))


@dataclass(kw_only=True)
class ProcessGroup:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    """Index of this process, 0 to ``world_size - 1``."""
    world_size: int = 1
    """Processes of the run."""
    local_world_size: int = 1
    """Processes of the run on this machine (they share its memory)."""
    device: str | None = None
    """The device Accelerate assigned (``cuda:<local rank>``, or ``cpu``), or None without it."""
    state: Any = None
    """``accelerate.PartialState``, or None without Accelerate."""

    @property
    def is_main(self) -> bool:
        """Process 0, which prepares the output and merges run.json."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.state is not None and self.world_size > 1:
            self.state.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on process 0 first, then on the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def take(self, items: list[Any]) -> list[Any]:
        """This process's share of ``items``: every ``world_size``-th, from ``rank``."""
        return items[self.rank::self.world_size]


def process_group(use_accelerate: bool, device: str) -> ProcessGroup:
    """The run's processes: one, unless ``use_accelerate`` or launched by Accelerate.

    Args:
        use_accelerate: ``--use-accelerate``.
        device: ``--device``; ``auto`` takes Accelerate's device for this process, ``cpu``
            keeps every process on the CPU.

    Raises:
        ImportError: Accelerate is wanted but not installed (the message says how to get it).
    """
    if not (use_accelerate or launched_by_accelerate()):
        return ProcessGroup()
    try:
        from accelerate import PartialState
    except ImportError as exc:
        raise ImportError("several processes need Hugging Face Accelerate: "
                          "pip install accelerate") from exc
    import torch

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    assigned = "cpu" if cpu else str(state.device)
    group = ProcessGroup(rank=state.process_index, world_size=state.num_processes,
                         local_world_size=state.num_processes // max(1, _num_machines()),
                         device=assigned, state=state)
    logger.info("process %d of %d on %s", group.rank, group.world_size, assigned)
    return group


def _num_machines() -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return max(1, world // max(1, local))
