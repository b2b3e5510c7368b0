"""CPU offload of the transformer blocks: exact outputs, weights back in CPU memory, byte counters.

Everything runs on the CPU (execution device "cpu", where the device copy is the CPU tensor
itself). The ``copy`` mode replaces that no-op by a real copy (``clone``) so that the swap of
``tensor.data`` to a separate device copy and back is observable, as it is on a GPU.
"""

import pytest
import torch
from torch import nn

from pipeline.algo.models import offload as offload_mod
from pipeline.algo.models.da3 import DA3Config, build_da3
from pipeline.algo.models.generated_weights import load_rule_weights_
from pipeline.algo.models.offload import enable_cpu_offload, offload_blocks
from pipeline.algo.models.vggt import VGGTConfig, build_model

VGGT_CONTAINERS = (
    "aggregator.patch_embed.blocks",
    "aggregator.frame_blocks",
    "aggregator.global_blocks",
    "camera_head.trunk",
    "track_head.tracker.updateformer.time_blocks",
    "track_head.tracker.updateformer.space_virtual_blocks",
    "track_head.tracker.updateformer.space_point2virtual_blocks",
    "track_head.tracker.updateformer.space_virtual2point_blocks",
)


def _vggt():
    return load_rule_weights_(build_model(VGGTConfig.tiny(), device="meta")).requires_grad_(False)


def _da3():
    return load_rule_weights_(build_da3(DA3Config.tiny(), device="meta")).requires_grad_(False)


@pytest.fixture(scope="module")
def vggt_inputs():
    """Images ``[1, 3, 3, 56, 70]`` and 3 query points (fixed seed)."""
    images = torch.rand(1, 3, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    return images, torch.tensor([[[10.0, 20.0], [30.5, 40.25], [60.0, 50.0]]])


@pytest.fixture(scope="module")
def vggt_reference(vggt_inputs):
    """Outputs of the plain tiny VGGT."""
    return _run(_vggt(), *vggt_inputs)


@pytest.fixture(params=["noop", "copy"])
def copy_mode(request, monkeypatch):
    """``noop``: the real CPU path; ``copy``: every materialisation is a separate tensor."""
    if request.param == "copy":
        monkeypatch.setattr(offload_mod, "_copy_to_device", lambda host, device: host.clone())
    return request.param


def _run(model, *args, **kw):
    with torch.inference_mode():
        return model(*args, **kw)


def _assert_equal(a, b):
    """Nested outputs (dicts, lists, tensors, None, ints) equal, tensors bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), float((a.float() - b.float()).abs().max())
    else:
        assert a == b


def _bytes(module):
    """Bytes of ``module``'s parameters and buffers (each shared tensor once)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _assert_on_host(offload):
    """Every offloaded tensor is on the CPU, on the storage of its CPU copy; no block is
    materialised."""
    for block in offload.blocks:
        assert not offload.is_materialized(block)
        host = offload.host_tensors(block)
        assert host and host.keys() == {
            n for n, _ in [*block.named_parameters(), *block.named_buffers()]
        }
        for name, t in [*block.named_parameters(), *block.named_buffers()]:
            assert t.device.type == "cpu" and t.data_ptr() == host[name].data_ptr(), name


def _watch_device_copies(offload):
    """Probe hooks (after the offload's own) recording per call whether the block ran on copies
    separate from its CPU storage; returns the list of records."""
    seen = []

    def probe(block, args):
        host = offload.host_tensors(block)
        seen.append(all(t.data_ptr() != host[n].data_ptr() for n, t in block.named_parameters()))

    for block in offload.blocks:
        block.register_forward_pre_hook(probe)
    return seen


def test_offload_blocks_of_vggt_are_all_transformer_blocks():
    model = _vggt()
    expected = [b for name in VGGT_CONTAINERS for b in model.get_submodule(name)]
    assert [id(b) for b in offload_blocks(model)] == [id(b) for b in expected]
    assert (
        len(expected) == 2 + 4 + 4 + 2 + 4 * 2
    )  # tiny: dino_depth, depth x2, trunk, track_depth x4


def test_offload_blocks_of_da3():
    model = _da3()
    net = model.model
    expected = [*net.backbone.pretrained.blocks, *net.cam_enc.trunk]
    assert [id(b) for b in offload_blocks(model)] == [id(b) for b in expected]


class _Inner(nn.Module):
    """A block holding its own ``blocks`` list (must not be offloaded separately)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


class _Toy(nn.Module):
    """Embedding, nested block lists (a ModuleList of ModuleLists), a tied weight, a head."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.embed = nn.Linear(3, 4)
            self.blocks = nn.ModuleList([_Inner(), nn.ModuleList([_Inner(), nn.Linear(4, 4)])])
            self.head = nn.Linear(4, 4)
        self.head.weight = self.blocks[1][1].weight  # tied: must stay resident
        self.register_buffer("scale", torch.full((4,), 0.5))

    def forward(self, x):
        x = self.embed(x)
        for block in (
            self.blocks[0],
            self.blocks[1][0],
            self.blocks[1][1],
            self.blocks[0],
        ):  # blocks[0] twice
            x = block(x)
        return self.head(x) * self.scale


def test_nested_lists_once_and_tied_weights_stay_resident():
    model = _Toy().requires_grad_(False)
    blocks = offload_blocks(model)
    assert [id(b) for b in blocks] == [
        id(model.blocks[0]),
        id(model.blocks[1][0]),
        id(model.blocks[1][1]),
    ]
    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(2))
    reference = _run(model, x)
    offload = enable_cpu_offload(model, "cpu")
    _assert_equal(_run(model, x), reference)
    tied = model.head.weight
    assert id(tied) not in {id(t) for t in offload.host_tensors(model.blocks[1][1]).values()}
    assert set(offload.host_tensors(model.blocks[1][1])) == {"bias"}
    inner = _bytes(model.blocks[0])
    assert offload.offloaded_bytes == 2 * inner + 4 * 4
    assert offload.transferred_bytes == 3 * inner + 4 * 4  # blocks[0] ran twice
    assert offload.offloaded_bytes + offload.resident_bytes == _bytes(model)


def test_vggt_outputs_equal_and_weights_return_to_cpu(vggt_inputs, vggt_reference, copy_mode):
    model = _vggt()
    cfg = model.config
    offload = enable_cpu_offload(model, "cpu")
    assert not offload.pinned and offload.transferred_bytes == 0
    seen = _watch_device_copies(offload)
    for _ in range(2):  # the hooks survive repeated calls
        _assert_equal(_run(model, *vggt_inputs), vggt_reference)
        _assert_on_host(offload)
    assert all(seen) == (copy_mode == "copy") and any(seen) == (copy_mode == "copy")
    # calls per forward: aggregator and DINOv2 blocks once, the trunk per camera iteration,
    # tracker blocks per track iteration
    calls = {name: 1 for name in VGGT_CONTAINERS[:3]}
    calls["camera_head.trunk"] = cfg.camera_iterations
    calls.update((name, cfg.track_iters) for name in VGGT_CONTAINERS[4:])
    per_forward = sum(n * _bytes(model.get_submodule(name)) for name, n in calls.items())
    assert offload.transferred_bytes == 2 * per_forward
    assert len(seen) == 2 * sum(n * len(model.get_submodule(name)) for name, n in calls.items())
    assert offload.offloaded_bytes == sum(
        _bytes(model.get_submodule(name)) for name in VGGT_CONTAINERS
    )
    assert offload.offloaded_bytes + offload.resident_bytes == _bytes(model)


def test_da3_outputs_equal_with_frame_groups_and_camera_conditioning(copy_mode):
    model = _da3()
    images = torch.rand(1, 3, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    extr = torch.eye(4).expand(1, 3, 4, 4).clone()
    extr[..., 0, 3] = torch.arange(3.0)
    intr = torch.tensor([[60.0, 0, 35], [0, 60, 28], [0, 0, 1]]).expand(1, 3, 3, 3)
    cases = [((images,), {}), ((images, extr, intr), {"frame_batch_size": 2})]
    references = [_run(model, *args, **kw) for args, kw in cases]
    offload = enable_cpu_offload(model, "cpu")
    for (args, kw), reference in zip(cases, references):
        _assert_equal(_run(model, *args, **kw), reference)
        _assert_on_host(offload)
    net, split = model.model, model.config.alt_start - 1
    blocks = net.backbone.pretrained.blocks
    early, late = sum(_bytes(b) for b in blocks[:split]), sum(_bytes(b) for b in blocks[split:])
    # first case: every backbone block once; second: late blocks once per frame group ([0,1],
    # [0,2]), trunk once
    assert offload.transferred_bytes == (early + late) + (
        early + 2 * late + _bytes(net.cam_enc.trunk)
    )
    assert offload.offloaded_bytes + offload.resident_bytes == _bytes(model)


def _fail_once(monkeypatch, module, error, on_call=None):
    """Make ``module``'s next forward raise ``error`` (after calling ``on_call``); later calls run
    normally."""
    original = module.forward
    calls = []

    def forward(*args, **kwargs):
        calls.append(on_call() if on_call else None)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)
    return calls


def test_exception_inside_a_block_leaves_weights_on_cpu(
    vggt_inputs, vggt_reference, copy_mode, monkeypatch
):
    model = _vggt()
    offload = enable_cpu_offload(model, "cpu")
    block = model.aggregator.global_blocks[1]
    calls = _fail_once(
        monkeypatch, block.mlp, RuntimeError("boom"), lambda: offload.is_materialized(block)
    )
    with pytest.raises(RuntimeError, match="boom"):
        _run(model, *vggt_inputs)
    assert calls == [True]  # it failed while materialised
    _assert_on_host(offload)
    before = offload.transferred_bytes
    _assert_equal(_run(model, *vggt_inputs), vggt_reference)  # the hooks still work
    _assert_on_host(offload)
    assert calls == [True, True] and offload.transferred_bytes > before


def test_interrupted_block_is_released_at_the_next_call(
    vggt_inputs, vggt_reference, copy_mode, monkeypatch
):
    model = _vggt()
    offload = enable_cpu_offload(model, "cpu")
    block = model.aggregator.frame_blocks[0]
    _fail_once(monkeypatch, block.attn, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):  # not an Exception: the forward hooks are skipped
        _run(model, *vggt_inputs)
    assert offload.is_materialized(block)
    _assert_equal(_run(model, *vggt_inputs), vggt_reference)
    _assert_on_host(offload)
    offload._pre_hook(block, ())
    offload.release()  # also by hand
    _assert_on_host(offload)


def test_remove_restores_a_plain_model(vggt_inputs, vggt_reference, copy_mode):
    model = _vggt()
    names = {n: p for n, p in model.named_parameters()}
    offload = enable_cpu_offload(model, "cpu")
    _run(model, *vggt_inputs)
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_cpu_offload(model, "cpu")
    offload.remove()
    offload.remove()  # harmless twice
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in offload.blocks)
    assert not model._forward_pre_hooks
    assert {n: p for n, p in model.named_parameters()} == names  # same Parameter objects
    assert all(
        p.device.type == "cpu" and p.dtype == torch.float32 and not p.requires_grad
        for p in model.parameters()
    )
    before = offload.transferred_bytes
    _assert_equal(_run(model, *vggt_inputs), vggt_reference)
    assert offload.transferred_bytes == before
    again = enable_cpu_offload(model, "cpu")  # can be enabled again
    _assert_equal(_run(model, *vggt_inputs), vggt_reference)
    again.remove()


def test_explicit_blocks_are_checked():
    model = _Toy()
    with pytest.raises(ValueError, match="not a submodule"):
        enable_cpu_offload(model, "cpu", blocks=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="contains another block"):
        enable_cpu_offload(model, "cpu", blocks=[model.blocks[0], model.blocks[0].blocks[0]])
    offload = enable_cpu_offload(model, "cpu", blocks=[model.blocks[0], model.blocks[0]])
    assert offload.blocks == [model.blocks[0]] and offload.offloaded_bytes == _bytes(
        model.blocks[0]
    )


class _Reentrant(nn.Module):
    """A block whose forward calls the block itself once more (a re-entrant call)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.pointers = []

    def forward(self, x, inner=False):
        if not inner:
            x = self(x, inner=True)
        self.pointers.append(self.lin.weight.data_ptr())  # after the inner call returned, too
        return self.lin(x)


def test_reentrant_block_call_keeps_its_device_copy(copy_mode):
    model = nn.Sequential()
    model.blocks = nn.ModuleList([_Reentrant()])
    model.requires_grad_(False)
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(3))
    reference = _run(model.blocks[0], x)
    offload = enable_cpu_offload(model, "cpu")
    block = model.blocks[0]
    block.pointers.clear()
    _assert_equal(_run(block, x), reference)
    host = offload.host_tensors(block)["lin.weight"].data_ptr()
    assert len(set(block.pointers)) == 1 and (block.pointers[0] != host) == (copy_mode == "copy")
    assert offload.transferred_bytes == _bytes(block)  # one materialisation for the outermost call
    _assert_on_host(offload)


@pytest.mark.gpu
def test_cuda_offload_equals_the_resident_model(vggt_inputs):
    images, queries = (t.cuda() for t in vggt_inputs)
    reference = _run(_vggt().cuda(), images, queries)
    model = _vggt()
    offload = enable_cpu_offload(model, "cuda")
    assert offload.pinned
    _assert_equal(_run(model, images, queries), reference)
    _assert_on_host(offload)
    assert all(t.is_pinned() for b in offload.blocks for t in offload.host_tensors(b).values())
    assert model.aggregator.camera_token.is_cuda and model.depth_head.projects[0].weight.is_cuda
    offload.remove()
    assert all(p.is_cuda for p in model.parameters())
    _assert_equal(_run(model, images, queries), reference)
