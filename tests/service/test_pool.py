"""The model pool: tolerant loading, bounded concurrency per device, byte-bounded LRU cache."""

from __future__ import annotations

import json
import threading
import time

import anyio
import numpy as np
import pytest
import torch

from service.pool import LRUByteCache, ModelPool, nbytes_of, resolve_device


def test_lru_evicts_least_recently_used_by_bytes():
    cache = LRUByteCache(max_bytes=100)
    assert cache.put(("v1", "m"), "a", nbytes=40) and cache.put(("v2", "m"), "b", nbytes=40)
    assert cache.get(("v1", "m")) == "a"  # v1 now most recent
    assert cache.put(("v3", "m"), "c", nbytes=40)  # 120 > 100: evicts v2, the least recent
    assert cache.get(("v2", "m")) is None and cache.get(("v1", "m")) == "a" and cache.bytes == 80
    assert not cache.put(("v4", "m"), "huge", nbytes=101) and len(cache) == 2
    assert cache.put(("v1", "m"), "a2", nbytes=10) and cache.bytes == 50  # replacing frees the old size
    assert cache.invalidate(lambda k: k[0] == "v1") == 1 and cache.bytes == 40
    assert (cache.hits, cache.misses) == (2, 1)


def test_nbytes_counts_tensors_and_arrays():
    value = {"h": torch.zeros(2, 8, 4, 4), "labels": np.zeros((3, 3), np.uint8), "meta": "x"}
    assert nbytes_of(value) == 2 * 8 * 4 * 4 * 4 + 9
    assert nbytes_of([torch.zeros(10, dtype=torch.float16)]) == 20


def test_run_bounds_concurrency_per_device(tmp_path):
    pool = ModelPool(tmp_path, device="cpu", concurrency=2)
    active, peak, lock = [0], [0], threading.Lock()

    def work(i: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return i * i

    async def main() -> list[int]:
        results: list[int] = [0] * 6

        async def one(i: int) -> None:
            results[i] = await pool.run(work, i)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
        return results

    assert anyio.run(main) == [0, 1, 4, 9, 16, 25]
    assert peak[0] == 2


def test_load_tolerates_missing_zoo_and_bad_entries(tmp_path):
    empty = ModelPool(tmp_path / "missing", device="cpu")
    empty.load()
    assert not empty.ready and empty.models == {} and empty.device is None
    (tmp_path / "zoo" / "models" / "ok").mkdir(parents=True)
    (tmp_path / "zoo" / "models" / "ok" / "card.json").write_text(json.dumps({"arch": "unet"}))
    (tmp_path / "zoo" / "models" / "bad").mkdir()
    (tmp_path / "zoo" / "models" / "bad" / "card.json").write_text("{}")

    moved = []

    class Model:
        def to(self, device):
            moved.append(device)
            return self

        def eval(self):
            return self

    def loader(path):
        if path.name == "bad":
            raise ValueError("corrupt weights")
        return Model(), json.loads((path / "card.json").read_text())

    pool = ModelPool(tmp_path / "zoo", device="cpu", model_loader=loader)
    pool.load()
    assert pool.ready and list(pool.models) == ["ok"] and moved == ["cpu"]
    assert pool.models["ok"].card == {"arch": "unet", "id": "ok"}
    assert pool.load_errors == {"model:bad": "ValueError: corrupt weights"}


@pytest.mark.parametrize("spec", ["cpu", "cuda:1"])
def test_explicit_device_is_kept(spec):
    assert resolve_device(spec) == spec


def test_auto_device_follows_cuda_availability():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_register_sae_loads_a_published_sae_with_the_default_loader(tmp_path):
    from medseglens_core.sae import SAEConfig, build_sae, save_sae

    pool = ModelPool(tmp_path / "zoo", device="cpu")
    pool.load()  # empty zoo: no device picked yet, default loaders
    assert pool.saes == {}
    save_sae(
        build_sae(SAEConfig(d_in=8, d_sae=16, k=2)), tmp_path / "zoo" / "saes" / "new", {"model_id": "m"}
    )
    assert pool.register_sae("new") is True
    assert pool.saes["new"].card["model_id"] == "m" and pool.saes["new"].obj.W_dec.shape == (16, 8)
    assert pool.register_sae("missing") is False and "sae:missing" in pool.load_errors
