"""CPU offload of the big transformer blocks (the ``--cpu-offload`` option, for 6-8 GB GPUs).

The weights of the network's transformer blocks stay in CPU memory (pinned when the execution
device is CUDA); each block's weights are copied to the execution device only while that block
runs, and dropped again when it returns. Everything else (patch projections, tokens, norms,
heads) stays resident on the execution device. Results are exactly those of the plain model:
the same weights, the same kernels; only where the weights live between calls changes.

Which modules are blocks (:func:`offload_blocks`): every element of every ``nn.ModuleList`` or
``nn.Sequential`` whose attribute name ends with ``"blocks"`` or is ``"trunk"``, found by walking
``model.named_modules()``; a ModuleList element that is itself a ModuleList is flattened, and a
block container inside an already chosen block is not visited again. For VGGT-1B (5.0 GB of
float32 weights) that is ``aggregator.frame_blocks`` / ``global_blocks`` (1.2 GB each),
``aggregator.patch_embed.blocks`` (the DINOv2 ViT, 1.2 GB), ``camera_head.trunk`` (an
``nn.Sequential`` of four 2048-wide blocks, 0.8 GB, run once per camera iteration) and the
tracker's ``*_blocks`` (0.17 GB, run once per track iteration): about 0.4 GB stays resident. For
DA3 it is ``backbone.pretrained.blocks`` and ``cam_enc.trunk``.

Mechanism: a forward pre-hook on each block sets ``tensor.data`` of its parameters and buffers
to a device copy (a ``non_blocking`` copy from the pinned CPU tensor, ordered on the current CUDA
stream, so the kernels that follow see it); a forward hook registered with ``always_call=True``
(also run when the block's forward raises an ``Exception``) sets ``tensor.data`` back to the CPU
tensor. Nothing is copied back: in inference the weights never change. A block called several
times in one forward (camera trunk iterations, frame groups) is copied once per call, and a
re-entrant call of a block that is already on the device copies nothing. The Parameter objects
themselves are kept, so ``state_dict()`` and ``named_parameters()`` keep working.

No prefetch: the next block's copy is not started on a side stream while the current block runs.
Doing that correctly needs the order of the blocks (not static here: VGGT alternates frame and
global blocks, DA3 loops over frame groups, the camera trunk runs several times), an event wait
of the compute stream on the copy stream and ``record_stream`` for the copied tensors; it could
not be tested without a GPU, so the copies stay on the compute stream, in order.

Limitations: one forward at a time per model (not thread-safe); do not call ``model.to()`` or
load weights while the offload is enabled (call :meth:`CpuOffload.remove` first). A
``KeyboardInterrupt`` inside a block skips its forward hook; the block's device copy is then
dropped at the start of the next model call (or by :meth:`CpuOffload.release`).

Typical use (load on the CPU, so that the whole model never has to fit on the small GPU)::

    model = load_model(name, device="cpu")
    model.compute_dtype = resolve_dtype("auto", "cuda")
    offload = enable_cpu_offload(model, "cuda")
    with torch.inference_mode():
        out = model(images.cuda())
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

BLOCK_SUFFIX = "blocks"
"""Block containers: ``nn.ModuleList`` / ``nn.Sequential`` attributes whose name ends with this
..."""
TRUNK_NAMES = ("trunk",)
"""... or is one of these (the camera head / camera encoder trunks are ``nn.Sequential`` of
blocks)."""
_MARKER = "_cpu_offload_handle"

DeviceLike = str | torch.device


def _is_block_container(name: str, module: nn.Module) -> bool:
    """Whether ``module`` (qualified name ``name``) holds blocks to offload (see the module
    docstring)."""
    attr = name.rpartition(".")[2]
    named = attr.endswith(BLOCK_SUFFIX) or attr in TRUNK_NAMES
    return named and isinstance(module, (nn.ModuleList, nn.Sequential))


def _elements(container: nn.Module) -> Iterator[nn.Module]:
    """The elements of a block container, nested ``nn.ModuleList`` elements flattened."""
    for child in container.children():
        if isinstance(child, nn.ModuleList):
            yield from _elements(child)
        else:
            yield child


def offload_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` to keep in CPU memory, in ``named_modules()`` order.

    Rule: every element of every ``nn.ModuleList`` or ``nn.Sequential`` whose attribute name ends
    with ``"blocks"`` (``frame_blocks``, ``global_blocks``, ``blocks``, ``time_blocks`` ...) or is
    ``"trunk"``. ModuleList elements that are ModuleLists are flattened; containers inside a chosen
    block or inside a container already handled are skipped, and a module shared by several
    containers is listed once. Each returned block is called as a module (its hooks fire).
    """
    blocks: list[nn.Module] = []
    covered: set = set()
    for name, module in model.named_modules():
        if id(module) in covered or not _is_block_container(name, module):
            continue
        for block in _elements(module):
            if id(block) not in covered:
                blocks.append(block)
                covered.update(id(m) for m in block.modules())
        covered.update(id(m) for m in module.modules())
    return blocks


def _own_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters and buffers held by ``module`` itself (not by its children)."""
    yield from module.parameters(recurse=False)
    yield from module.buffers(recurse=False)


def _unique(tensors: Iterable[torch.Tensor], exclude: Iterable[int] = ()) -> list[torch.Tensor]:
    """``tensors`` without repeats (by identity) and without those whose ``id`` is in
    ``exclude``."""
    seen = set(exclude)
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _resident_tensors(model: nn.Module, block_ids: set) -> list[torch.Tensor]:
    """Parameters and buffers of the modules reachable from ``model`` without entering a block."""
    found, stack, seen = [], [model], set()
    while stack:
        module = stack.pop()
        if id(module) in seen or id(module) in block_ids:
            continue
        seen.add(id(module))
        found.extend(_own_tensors(module))
        stack.extend(module.children())
    return _unique(found)


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Total storage of ``tensors`` in bytes (elements times element size)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _to_host(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    """A CPU copy of ``tensor`` (page-locked when ``pin``); ``tensor``'s own storage when already on
    the CPU and not pinning."""
    with torch.inference_mode(False):
        if not pin:
            return tensor.detach().to("cpu")
        host = torch.empty_like(tensor, device="cpu", pin_memory=True)
        return host.copy_(tensor.detach())


def _copy_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The device copy of a CPU tensor (``non_blocking``: asynchronous from pinned memory, ordered
    on the current stream); ``host`` itself when ``device`` is the CPU. Never an inference
    tensor."""
    with torch.inference_mode(False):
        return host.to(device, non_blocking=True)


def _checked_blocks(model: nn.Module, blocks: Iterable[nn.Module]) -> list[nn.Module]:
    """``blocks`` without repeats, after checking that they are submodules of ``model`` and not
    nested."""
    blocks = list(dict.fromkeys(blocks))
    inside = {id(m) for m in model.modules()}
    ids = {id(b) for b in blocks}
    for block in blocks:
        if id(block) not in inside:
            raise ValueError(f"{type(block).__name__} block is not a submodule of the model")
        if any(id(m) in ids for m in block.modules() if m is not block):
            raise ValueError(
                f"{type(block).__name__} block contains another block; offload the outer one only"
            )
    return blocks


class CpuOffload:
    """Handle of an enabled CPU offload (made by :func:`enable_cpu_offload`).

    Attributes:
        blocks: the offloaded blocks, in order.
        execution_device: where every module runs.
        pinned: whether the CPU copies are page-locked.
        offloaded_bytes: bytes of block weights (parameters and buffers) kept in CPU memory.
        resident_bytes: bytes of the weights that stay on the execution device.
        transferred_bytes: running total of bytes copied to the execution device, counting every
            materialisation of a block (also when the execution device is the CPU, where the
            "copy" is the CPU tensor itself).
    """

    def __init__(
        self, execution_device: torch.device, blocks: Sequence[nn.Module], *, pinned: bool
    ):
        self.execution_device = execution_device
        self.blocks = list(blocks)
        self.pinned = pinned
        self.offloaded_bytes = 0
        self.resident_bytes = 0
        self.transferred_bytes = 0
        self._tensors: dict[int, list[torch.Tensor]] = {}  # id(block) -> its offloaded tensors
        self._bytes: dict[int, int] = {}  # id(block) -> bytes of one materialisation
        self._host: dict[int, torch.Tensor] = {}  # id(tensor) -> CPU copy
        self._depth: dict[int, int] = {}  # id(block) -> calls in progress
        self._handles: list = []
        self._model: nn.Module | None = None

    def host_tensors(self, block: nn.Module) -> dict[str, torch.Tensor]:
        """The CPU copies of ``block``'s offloaded parameters and buffers, by their names in
        ``block``."""
        ids = {id(t) for t in self._tensors[id(block)]}
        named = [*block.named_parameters(), *block.named_buffers()]
        return {name: self._host[id(t)] for name, t in named if id(t) in ids}

    def is_materialized(self, block: nn.Module) -> bool:
        """Whether ``block``'s weights are on the execution device now (i.e. it is running)."""
        return self._depth.get(id(block), 0) > 0

    def release(self) -> None:
        """Drop every block's device copy now (run automatically at the start of each model
        call)."""
        for block in self.blocks:
            if self._depth.get(id(block), 0):
                self._depth[id(block)] = 0
                self._drop(block)

    def remove(self) -> None:
        """Remove the hooks and move the block weights to the execution device: a plain model again.

        Calling it twice is harmless.
        """
        if self._model is None:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block in self.blocks:
            for t in self._tensors[id(block)]:
                t.data = _copy_to_device(self._host[id(t)], self.execution_device)
        self._host.clear()
        self._depth.clear()
        delattr(self._model, _MARKER)
        self._model = None
        logger.info(
            "cpu offload removed: %d blocks moved to %s", len(self.blocks), self.execution_device
        )

    def __repr__(self) -> str:
        """One line for the log: blocks, bytes offloaded / resident / transferred (MiB)."""
        mib = 2.0**20
        return (
            f"CpuOffload({len(self.blocks)} blocks, {self.offloaded_bytes / mib:.1f} MiB in "
            f"{'pinned ' if self.pinned else ''}CPU memory, {self.resident_bytes / mib:.1f} MiB "
            "resident on "
            f"{self.execution_device}, {self.transferred_bytes / mib:.1f} MiB transferred)"
        )

    # -- set-up ---------------------------------------------------------------------------------

    def _attach(self, model: nn.Module) -> None:
        """Move the tensors (blocks to CPU memory first, then the rest to the device) and register
        the hooks."""
        resident = _resident_tensors(model, {id(b) for b in self.blocks})
        resident_ids = {id(t) for t in resident}
        for block in self.blocks:
            self._offload(block, resident_ids)
        for t in resident:
            t.data = _copy_to_device(t.data, self.execution_device)
        self.offloaded_bytes = _nbytes(
            _unique(t for b in self.blocks for t in self._tensors[id(b)])
        )
        self.resident_bytes = _nbytes(resident)
        self._register(model)

    def _offload(self, block: nn.Module, resident_ids: set) -> None:
        """Record ``block``'s tensors (minus those shared with resident modules) and point them at
        CPU copies."""
        tensors = _unique(
            (t for m in block.modules() for t in _own_tensors(m)), exclude=resident_ids
        )
        self._tensors[id(block)], self._bytes[id(block)] = tensors, _nbytes(tensors)
        for t in tensors:
            if id(t) not in self._host:  # a tensor shared by two blocks gets one CPU copy
                self._host[id(t)] = _to_host(t, self.pinned)
                t.data = self._host[id(t)]

    def _register(self, model: nn.Module) -> None:
        """Hooks: a release on the model, a materialise / drop pair on every block."""
        self._handles.append(model.register_forward_pre_hook(self._model_pre_hook))
        for block in self.blocks:
            self._depth[id(block)] = 0
            self._handles.append(block.register_forward_pre_hook(self._pre_hook))
            self._handles.append(block.register_forward_hook(self._post_hook, always_call=True))
        setattr(model, _MARKER, self)
        self._model = model

    # -- hooks ----------------------------------------------------------------------------------

    def _model_pre_hook(self, model: nn.Module, args) -> None:
        """Before each model call: no block can be running, drop leftovers of an interrupted
        call."""
        self.release()

    def _pre_hook(self, block: nn.Module, args) -> None:
        """Before a block runs: its weights to the execution device (unless it is already
        running)."""
        depth = self._depth[id(block)]
        self._depth[id(block)] = depth + 1
        if depth:
            return
        for t in self._tensors[id(block)]:
            t.data = _copy_to_device(self._host[id(t)], self.execution_device)
        self.transferred_bytes += self._bytes[id(block)]

    def _post_hook(self, block: nn.Module, args, output) -> None:
        """After a block ran, or raised: back to the CPU copies once its outermost call ends."""
        depth = self._depth[id(block)] - 1
        self._depth[id(block)] = max(depth, 0)
        if depth <= 0:
            self._drop(block)

    def _drop(self, block: nn.Module) -> None:
        """Point ``block``'s tensors at their CPU copies again (the device copies are freed)."""
        for t in self._tensors[id(block)]:
            t.data = self._host[id(t)]


def enable_cpu_offload(
    model: nn.Module,
    execution_device: DeviceLike,
    *,
    blocks: Iterable[nn.Module] | None = None,
    pin_memory: bool | None = None,
) -> CpuOffload:
    """Keep the weights of ``model``'s blocks in CPU memory and run everything on
    ``execution_device``.

    Args:
        model: the network (inference only: the weights must not change while offloaded).
        execution_device: where the model runs ("cuda", "cuda:1", "cpu" ...). With "cpu" the
            offload is a no-op that still counts (the "device copy" is the CPU tensor itself).
        blocks: the blocks to offload; None = :func:`offload_blocks` (``model``'s transformer
            blocks). They must be submodules of ``model`` and not nested in one another.
        pin_memory: page-lock the CPU copies (needed for asynchronous copies); None = when the
            execution device is CUDA.
    Returns:
        the :class:`CpuOffload` handle (byte counters; ``remove()`` undoes the offload).
    Raises:
        RuntimeError: the offload is already enabled on ``model``.
        ValueError: a given block is not a submodule of ``model``, or contains another block.
    """
    if getattr(model, _MARKER, None) is not None:
        raise RuntimeError(
            "cpu offload is already enabled on this model; call remove() on its handle first"
        )
    device = torch.device(execution_device)
    chosen = offload_blocks(model) if blocks is None else _checked_blocks(model, blocks)
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory)
    offload = CpuOffload(device, chosen, pinned=pin)
    offload._attach(model)
    logger.info("%s", offload)
    return offload
