"""The warm model cache: one network per cache, loaded again only for another key."""

from __future__ import annotations

from pipeline.algo.models.cache import ModelCache, cached_load, models_kept_in


def test_the_same_key_is_loaded_once_and_another_key_replaces_it():
    cache, loads = ModelCache(), []

    def load(name):
        def go():
            loads.append(name)
            return {"net": name}
        return go

    with models_kept_in(cache):
        first, loaded = cached_load(("a", "cpu"), load("a"))
        again, loaded_again = cached_load(("a", "cpu"), load("a"))
        assert (loaded, loaded_again) == (True, False) and again is first
        other, _ = cached_load(("b", "cpu"), load("b"))
    assert other == {"net": "b"} and loads == ["a", "b"] and cache.loads == 2
    assert cache.held == ("b", "cpu")
    assert cache.clear() and cache.held is None and not cache.clear()


def test_outside_a_cache_every_load_loads():
    calls = []
    for _ in range(2):
        value, loaded = cached_load("k", lambda: calls.append(1) or len(calls))
        assert loaded
    assert calls == [1, 1]
