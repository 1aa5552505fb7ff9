"""The voxel hash table against a Python dict: random inserts, lookups and erases, with
ordinary hashing (the probe windows resolve nearly everything) and with every key hashed
to a few buckets (long probe chains: the compacting fallback), including tombstone reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava3d_ros.core.memory import hash_table as ht
from llava3d_ros.core.memory.hash_table import VoxelHashTable
from llava3d_ros.core.transfers import TransferMeter


def _exercise(table: VoxelHashTable, rng: np.random.Generator, steps: int) -> None:
    truth: dict[int, tuple[int, int]] = {}  # key -> (slot, table position)
    next_slot = 0
    for _ in range(steps):
        n = int(rng.integers(1, 40))
        fresh = [k for k in rng.choice(1 << 30, n, replace=False).tolist() if k not in truth]
        room = int(ht.MAX_LOAD * table.size) - len(truth) - table.tombstones
        fresh = fresh[: max(0, min(len(fresh), room))]
        if fresh:
            keys = torch.tensor(fresh, dtype=torch.long)
            slots = torch.arange(next_slot, next_slot + len(fresh))
            next_slot += len(fresh)
            where = table.insert(keys, slots)
            for k, s, w in zip(fresh, slots.tolist(), where.tolist(), strict=True):
                assert 0 <= w < table.size
                truth[k] = (s, w)
        asked = list(truth)[:: max(1, len(truth) // 50)] + [(1 << 31) + i for i in range(5)]
        got = table.lookup(torch.tensor(asked, dtype=torch.long)).tolist()
        assert got == [truth[k][0] if k in truth else -1 for k in asked]
        if truth and rng.random() < 0.5:
            gone = [k for k in truth if rng.random() < 0.3]
            if gone:
                table.erase(torch.tensor([truth[k][1] for k in gone], dtype=torch.long))
                for k in gone:
                    del truth[k]
        keys_now, _ = table.tensors()
        assert int((keys_now == ht.TOMB).sum()) == table.tombstones
        assert int((keys_now >= 0).sum()) == len(truth)
    positions = [w for _, w in truth.values()]
    assert len(set(positions)) == len(positions)


def test_inserts_lookups_and_erases_agree_with_a_dict() -> None:
    _exercise(VoxelHashTable(400, torch.device("cpu")), np.random.default_rng(0), 60)


def test_long_probe_chains_take_the_fallback_and_stay_correct(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = VoxelHashTable(200, torch.device("cpu"))
    # Three buckets for every key: chains far longer than the probe windows.
    monkeypatch.setattr(table, "_hash", lambda keys: (keys % 3) * 7)
    _exercise(table, np.random.default_rng(1), 40)


def test_a_lookup_of_resolved_keys_does_not_wait_mid_probe() -> None:
    table = VoxelHashTable(10_000, torch.device("cpu"))
    keys = torch.arange(0, 3000, dtype=torch.long) * 7919
    table.insert(keys, torch.arange(3000))
    with TransferMeter() as meter:
        slots = table.lookup(keys)
    assert torch.equal(slots, torch.arange(3000))
    assert meter.counts.syncs == 1, meter.counts.where  # the one check after the rounds


def test_probing_launches_a_bounded_number_of_operators() -> None:
    """Probes are read in windows: the operator count of a lookup (a kernel launch each on
    a GPU) does not grow with the keys or the probes, nor that of a keyframe-sized insert
    (a few hundred new voxels, no key left for the compacting loop)."""
    table = VoxelHashTable(10_000, torch.device("cpu"))
    keys = torch.arange(0, 3000, dtype=torch.long) * 7919
    table.insert(keys, torch.arange(3000))
    fresh = torch.arange(3000, 3300, dtype=torch.long) * 7919
    with TransferMeter() as meter:
        table.insert(fresh, torch.arange(300))
    assert meter.counts.launches <= 90 and meter.counts.data_dependent == 0, meter.counts.where
    for asked in (keys[:10], keys, keys + 1):  # few, many, all absent
        with TransferMeter() as meter:
            table.lookup(asked)
        assert meter.counts.launches <= 32, meter.counts.where
