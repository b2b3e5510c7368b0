"""``load_model``: checkpoints from a file, a folder or the Hugging Face hub, for any registered
architecture.

Weights are located by :func:`resolve_weights` (local file, folder, or hub repo id through
``huggingface_hub``, honouring ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` at call time), read by
:func:`read_state_dict` (``.safetensors``, or ``.pt``/``.pth``/``.bin`` possibly wrapped in a
``"model"``/``"state_dict"`` key), and loaded ``strict`` into a network built on the ``meta``
device (no double allocation). The architecture comes from ``config.json`` (``"architecture"``)
or is detected from the state-dict keys; a new network plugs in with :func:`register_architecture`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...infra.hub import VGGT_1B, hub_offline
from .da3 import DA3Config, build_da3, is_da3_state_dict
from .precision import DTypeLike, resolve_dtype
from .vggt import VGGTConfig, build_model

logger = logging.getLogger(__name__)

WEIGHT_FILENAMES = ("model.safetensors", "model.safetensors.index.json", "model.pt", "model.pth",
                    "pytorch_model.bin")
"""File names looked for in a folder or hub repo, in order of preference."""
SHARD_INDEX_SUFFIX = ".safetensors.index.json"
"""A checkpoint saved in shards: this index names the ``.safetensors`` file of every tensor
(``{"weight_map": {key: file}}``, the Hugging Face layout), the shards lie beside it."""
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", SHARD_INDEX_SUFFIX)
CONFIG_FILENAME = "config.json"
DDP_PREFIX = "module."
"""The prefix of every key of a state dict saved from a ``DistributedDataParallel`` wrapper."""
DEFAULT_REPO = VGGT_1B


class WeightsNotFoundError(FileNotFoundError):
    """No checkpoint could be found locally (or downloaded) for the requested model."""


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used: unreadable, not tensors, or not the weights
    of a known network (missing, unexpected or misshapen keys). The message is one line."""


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """How to recognise and build one network family."""

    name: str
    """Registry key, also written as ``"architecture"`` in config.json."""
    matches: Callable[[Collection[str]], bool]
    """True if a state dict with these keys belongs to this architecture."""
    build: Callable[[Mapping[str, Any] | None], nn.Module]
    """Build the network on the current default device from a config dict (None = the default
    model)."""
    config_to_dict: Callable[[Any], dict[str, Any]]
    """Turn a config object (or dict) into the dict written to config.json."""


def _vggt_matches(keys: Collection[str]) -> bool:
    return (
        "aggregator.patch_embed.patch_embed.proj.weight" in keys
        and "aggregator.camera_token" in keys
    )


def _vggt_build(config: Mapping[str, Any] | None) -> nn.Module:
    return build_model(VGGTConfig.from_dict(dict(config)) if config else VGGTConfig.vggt_1b())


def _vggt_config_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if isinstance(config, VGGTConfig) else dict(config)


def _da3_build(config: Mapping[str, Any] | None) -> nn.Module:
    if not config:
        raise ValueError(
            "a DA3 checkpoint needs its config.json (model_name) or config=DA3Config.variant(...)"
        )
    return build_da3(DA3Config.from_dict(dict(config)))


def _da3_config_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if isinstance(config, DA3Config) else dict(config)


_ARCHITECTURES: dict[str, Architecture] = {
    "vggt": Architecture(
        name="vggt", matches=_vggt_matches, build=_vggt_build, config_to_dict=_vggt_config_dict
    ),
    "da3": Architecture(
        name="da3", matches=is_da3_state_dict, build=_da3_build, config_to_dict=_da3_config_dict
    ),
}


def register_architecture(arch: Architecture) -> None:
    """Make ``load_model`` able to detect and build ``arch`` (e.g. Depth Anything 3)."""
    _ARCHITECTURES[arch.name] = arch


def architectures() -> tuple[str, ...]:
    """Names of the registered architectures."""
    return tuple(_ARCHITECTURES)


def _how_to_get(name: str) -> str:
    repo = name if _looks_like_repo_id(name) else DEFAULT_REPO
    return (
        f"Download the weights on a machine with internet access (`hf download {repo}`) and "
        "copy the Hugging Face cache (HF_HUB_CACHE) here, or pass a local path to a "
        f".safetensors/.pt checkpoint or to a folder containing "
        f"{' or '.join(WEIGHT_FILENAMES[:2])}."
    )


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~", "/"))
        and not name.endswith(WEIGHT_SUFFIXES)
        and not os.path.exists(name)
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint (``HF_ENDPOINT``) opens within
    ``timeout`` seconds: a quick check, so that a machine without network fails at once instead
    of sitting through the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cache_dir(cache_dir: str | None) -> str | None:
    """Cache folder from the argument or the environment *now* (huggingface_hub reads it at
    import)."""
    if cache_dir:
        return str(cache_dir)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _find_in_folder(folder: Path) -> Path | None:
    for name in WEIGHT_FILENAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir()
                        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return candidates[0] if len(candidates) == 1 else None


def _local_files(path: Path) -> tuple[Path, Path | None]:
    """(weights, config or None) for an existing local file or folder."""
    weights = path if path.is_file() else _find_in_folder(path)
    if weights is None:
        raise WeightsNotFoundError(
            f"no checkpoint ({', '.join(WEIGHT_FILENAMES)}) in folder {path}. "
            + _how_to_get(str(path))
        )
    if not weights.name.endswith(WEIGHT_SUFFIXES):
        raise CheckpointError(
            f"unsupported checkpoint format {weights.suffix!r} ({weights}); expected one of "
            f"{WEIGHT_SUFFIXES}"
        )
    config = weights.parent / CONFIG_FILENAME
    return weights, (config if config.is_file() else None)


def _from_hub_cache(
    repo_id: str, filename: str, revision: str | None, cache_dir: str | None
) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return found if isinstance(found, str) else None


def _hub_file(
    repo_id: str, filename: str, revision: str | None, cache_dir: str | None, offline: bool
) -> str | None:
    """Path of ``filename`` of the hub repo (cache first; downloads unless offline), or None."""
    cached = _from_hub_cache(repo_id, filename, revision, cache_dir)
    if cached or offline:
        return cached
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except Exception as exc:  # missing entry, missing repo, no network: all mean "not available"
        logger.debug("hub download of %s/%s failed: %s", repo_id, filename, exc)
        return None


def _hub_files(
    repo_id: str, revision: str | None, cache_dir: str | None
) -> tuple[Path, Path | None]:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"{repo_id!r} is not a local path and huggingface_hub is not installed "
            f"(pip install huggingface_hub). " + _how_to_get(repo_id)
        ) from exc
    offline = hub_offline()
    cache = _hub_cache_dir(cache_dir)
    unreachable = False
    if not offline and not any(
        _from_hub_cache(repo_id, n, revision, cache) for n in WEIGHT_FILENAMES
    ):
        unreachable = offline = not hub_reachable()
    for name in WEIGHT_FILENAMES:
        weights = _hub_file(repo_id, name, revision, cache, offline)
        if weights and name.endswith(SHARD_INDEX_SUFFIX):  # its shards, into the same snapshot
            shards = [_hub_file(repo_id, shard, revision, cache, offline)
                      for shard in _shard_names(Path(weights))]
            weights = weights if all(shards) else None
        if weights:
            config = _hub_file(repo_id, CONFIG_FILENAME, revision, cache, offline)
            return Path(weights), (Path(config) if config else None)
    where = f"the hub cache ({cache or 'default location'})"
    if unreachable:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        where += f", and {endpoint} cannot be reached (no network?)"
    else:
        where += " with HF_HUB_OFFLINE=1" if offline else " or online"
    raise WeightsNotFoundError(
        f"weights for {repo_id!r} not found in {where}, and no file or folder "
        f"{os.path.abspath(repo_id)} exists. " + _how_to_get(repo_id)
    )


def resolve_weights(
    name_or_path: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None
) -> tuple[Path, Path | None]:
    """Locate ``(checkpoint file, config.json or None)``; raises :class:`WeightsNotFoundError`."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return _local_files(path)
    if _looks_like_repo_id(name):
        return _hub_files(name, revision, cache_dir)
    raise WeightsNotFoundError(f"checkpoint {name!r} does not exist. " + _how_to_get(name))


def weights_available(
    name_or_path: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None
) -> bool:
    """True if the checkpoint is on this machine (local path or hub cache). Never downloads."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        try:
            _local_files(path)
            return True
        except (WeightsNotFoundError, ValueError):
            return False
    if not _looks_like_repo_id(name):
        return False
    try:
        cache = _hub_cache_dir(cache_dir)
        return any(_from_hub_cache(name, f, revision, cache) for f in WEIGHT_FILENAMES)
    except ImportError:
        return False


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch pickle checkpoint, on CPU, unwrapped from
    ``model``/``state_dict``.

    Raises:
        CheckpointError: the file cannot be read as a checkpoint, or holds no tensors.
    """
    path = Path(path)
    try:
        state = _read_checkpoint(path)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, pickle and zip readers raise many kinds
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(exc)}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    if all(k.startswith(DDP_PREFIX) for k in state):  # saved from DistributedDataParallel
        return {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _shard_names(index: Path) -> list[str]:
    """The shard files an index names, in order (read errors pass on)."""
    weight_map = json.loads(index.read_text())["weight_map"]
    return list(dict.fromkeys(weight_map[key] for key in sorted(weight_map)))


def weight_files(weights: Path) -> list[Path]:
    """The files a checkpoint is read from: ``weights`` and, for a shard index, its shards."""
    if not weights.name.endswith(SHARD_INDEX_SUFFIX):
        return [weights]
    return [weights, *(weights.parent / name for name in _shard_names(weights))]


def _read_checkpoint(path: Path) -> Any:
    if path.name.endswith(SHARD_INDEX_SUFFIX):
        state: dict[str, Any] = {}
        for shard in weight_files(path)[1:]:
            state.update(_read_checkpoint(shard))
        return state
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ImportError(
                "reading .safetensors needs the safetensors package: pip install safetensors"
            ) from exc
        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _reason(exc: BaseException) -> str:
    """Why a checkpoint could not be read, in one line. torch's weights-only unpickler explains
    at length how to load the file unsafely; only its reason is kept (a checkpoint is never
    unpickled beyond tensors here: that could run any code)."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return _one_line(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
    why = " ".join(found.group(1).split()) if found else "not a plain state dict"
    return (f"it is not a checkpoint of tensors only ({why}); files holding other Python "
            "objects are not unpickled")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checkpoint_fingerprint(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a checkpoint's weights without reading them: the name, and the file's
    size and modification time (a hub checkpoint's file is a blob named by its content hash).

    Raises:
        WeightsNotFoundError: see :func:`resolve_weights`.
        CheckpointError: a shard index that cannot be read or names a missing shard.
    """
    weights, _ = resolve_weights(name_or_path)
    stat = weights.stat()
    fingerprint: dict[str, Any] = {
        "name": str(name_or_path),
        "file": Path(weights).resolve().name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    if weights.name.endswith(SHARD_INDEX_SUFFIX):
        try:
            fingerprint["shards"] = [[f.resolve().name, st.st_size, st.st_mtime_ns]
                                     for f in weight_files(weights)[1:] for st in [f.stat()]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read the shards of {weights}: {_one_line(exc)}") from exc
    return fingerprint


def detect_architecture(
    keys: Collection[str], config: Mapping[str, Any] | None = None
) -> Architecture:
    """The registered architecture named by ``config["architecture"]`` or matching the state-dict
    keys."""
    named = (config or {}).get("architecture")
    if named is not None:
        if named not in _ARCHITECTURES:
            raise ValueError(f"unknown architecture {named!r}; registered: {architectures()}")
        return _ARCHITECTURES[named]
    for arch in _ARCHITECTURES.values():
        if arch.matches(keys):
            return arch
    raise ValueError(f"checkpoint matches none of the registered architectures {architectures()}")


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_REPO,
    device: str | torch.device = "cpu",
    dtype: DTypeLike = None,
    *,
    config: Any = None,
    architecture: str | None = None,
    expect: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load a checkpoint into its network, in eval mode on ``device``.

    Args:
        name_or_path: checkpoint file, folder holding one, or hub repo id (default
            ``facebook/VGGT-1B``).
        device: target device.
        dtype: compute precision: None (float32), "auto" (see :func:`resolve_dtype`) or a
            dtype/name.
            Parameters stay float32; the dtype drives autocast where the reference allows it.
        config: config object/dict overriding config.json (e.g. ``VGGTConfig.tiny()``).
        architecture: registry name overriding detection.
        expect: the architecture the caller needs; a checkpoint detected as another raises
            :class:`CheckpointError` naming what it holds (before its network is built).
        revision, cache_dir: hub options.
        strict: require the checkpoint keys to match the network exactly.
    Raises:
        WeightsNotFoundError: no checkpoint found (the message says how to get one).
    """
    weights, config_path = resolve_weights(name_or_path, revision=revision, cache_dir=cache_dir)
    state = read_state_dict(weights)
    cfg = config
    if cfg is None and config_path is not None:
        try:
            cfg = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {config_path}: {_one_line(exc)}") from exc
    try:
        arch = (
            _ARCHITECTURES[architecture]
            if architecture
            else detect_architecture(state.keys(), cfg if isinstance(cfg, Mapping) else None)
        )
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{weights}: {_one_line(exc)}") from exc
    if expect is not None and arch.name != expect:
        raise CheckpointError(f"{weights} holds a {arch.name} network, not {expect} "
                              f"(it is for --reconstructor {arch.name})")
    try:
        cfg_dict = arch.config_to_dict(cfg) if cfg is not None else None
        with torch.device("meta"):
            model = arch.build(cfg_dict)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{weights}: {_one_line(exc)}") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    _load_state(model, state, weights, arch.name, strict)
    if hasattr(model, "reset_non_persistent_buffers"):
        model.reset_non_persistent_buffers(torch.device("cpu"))
    model = model.to(device)
    model.compute_dtype = resolve_dtype(dtype, device)
    model.requires_grad_(False)
    logger.info(
        "loaded %s from %s (%s, compute %s)", arch.name, weights, device, model.compute_dtype
    )
    return model.eval()


def _load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], weights: Path, arch: str, strict: bool
) -> None:
    """``model.load_state_dict`` (its load hooks included), with a one-line
    :class:`CheckpointError` when the checkpoint does not fit: tensors of another shape, or
    (when ``strict``) missing or unexpected keys."""
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shapes that differ
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
            _one_line(exc),
        )
        raise CheckpointError(
            f"checkpoint {weights} does not fit the {arch} network: {detail}"
        ) from exc
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for keys, what in (
            (result.missing_keys, "missing keys"),
            (result.unexpected_keys, "unexpected keys"),
        )
        if keys
    ]
    if strict and problems:
        raise CheckpointError(
            f"checkpoint {weights} does not fit the {arch} network: {', '.join(problems)}"
        )


def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    architecture: str = "vggt",
    safetensors: bool = True,
) -> Path:
    """Write ``model.safetensors`` (or ``model.pt``) and ``config.json`` to ``folder``; returns the
    weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        alias = (v.data_ptr(), tuple(v.shape), v.stride())
        if (
            v.data_ptr() and alias in seen
        ):  # tied alias (DA3's shared LayerNorm): stored once, as safetensors does
            continue
        seen.add(alias)
        state[k] = v.detach().cpu().contiguous()
    if safetensors:
        from safetensors.torch import save_file

        path = folder / "model.safetensors"
        save_file(state, str(path))
    else:
        path = folder / "model.pt"
        torch.save(state, path)
    cfg = _ARCHITECTURES[architecture].config_to_dict(getattr(model, "config", {}))
    (folder / CONFIG_FILENAME).write_text(
        json.dumps({"architecture": architecture, **cfg}, indent=2)
    )
    return path
