"""Networks kept loaded between runs: the warm model of a long-lived process (the service).

A run loads its network through :func:`cached_load`. Outside :func:`models_kept_in` that is a
plain load; inside, the loaded network is kept in the :class:`ModelCache` and the next run that
asks for the same checkpoint (same file, size and modification time), device, compute dtype and
offload gets it without loading again. The cache holds one network: asking for another unloads
the one held first, so that two never share the memory of one device.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from ...infra.memory import settle

logger = logging.getLogger(__name__)

_ACTIVE: ContextVar[ModelCache | None] = ContextVar("pipeline_model_cache", default=None)


class ModelCache:
    """One loaded network and what identifies it; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Any = None
        self._value: Any = None
        self.loads = 0
        """Networks loaded since the cache was made (a reload counts again)."""
        self.last_used = time.monotonic()
        """When the held network was last handed out or :meth:`touch` ed (``time.monotonic``)."""

    @property
    def held(self) -> Any:
        """What identifies the network held (the key it was loaded for), or None."""
        return self._key

    def get(self, key: Any, load: Callable[[], Any]) -> tuple[Any, bool]:
        """The network for ``key``: the one held when it was loaded for ``key``, else
        ``load()`` (after unloading the one held). Returns it and whether it was loaded now."""
        with self._lock:
            self.last_used = time.monotonic()
            if self._value is not None and self._key == key:
                return self._value, False
            self._drop()
            value = load()
            self._key, self._value = key, value
            self.loads += 1
            return value, True

    def touch(self) -> None:
        """The network held was just used (a run using it ended now)."""
        self.last_used = time.monotonic()

    def clear(self) -> bool:
        """Unload the network held (its memory returned to the device); whether one was."""
        with self._lock:
            held = self._value is not None
            self._drop()
            return held

    def _drop(self) -> None:
        if self._value is None:
            return
        logger.info("unloading %s", _describe(self._key))
        self._key = self._value = None
        release_memory()


def release_memory() -> None:
    """Collect garbage and return freed memory: glibc's heap, the CUDA allocator's cache."""
    import torch

    settle(torch.device("cuda") if torch.cuda.is_available() else None)


@contextlib.contextmanager
def models_kept_in(cache: ModelCache) -> Iterator[ModelCache]:
    """Inside: networks are loaded through ``cache`` (in this thread and context)."""
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)


def cached_load(key: Any, load: Callable[[], Any]) -> tuple[Any, bool]:
    """``load()``, or the network the active cache holds for ``key`` (see
    :func:`models_kept_in`). Returns it and whether it was loaded now."""
    cache = _ACTIVE.get()
    if cache is None:
        return load(), True
    return cache.get(key, load)


def _describe(key: Any) -> str:
    return str(key[0].get("name", key)) if isinstance(key, tuple) and key and \
        isinstance(key[0], dict) else str(key)
