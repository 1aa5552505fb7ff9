"""Vectorised open-addressing hash table from voxel keys to storage slots, held in torch
tensors on the memory's device: linear probing done for all queries at once, one probe
per round, tombstones for evicted keys and a rebuild when they pile up. Its cost follows
the number of keys asked about, not the table size."""

from __future__ import annotations

import torch

from llava3d_ros.core import voxel_keys as vk

EMPTY = -1  # position never used (a probe sequence ends here)
TOMB = -2  # position freed by erase (probes continue past it; inserts reuse it)
MAX_LOAD = 0.625  # rebuild when live keys + tombstones exceed this fraction of the table
_COMPONENT = (1 << vk.KEY_BITS) - 1


class VoxelHashTable:
    """Keys (int64 >= 0, see ``core/voxel_keys.py``) -> slots (int64).

    ``capacity``: the most keys held at once; the table has at least twice as many
    positions (a power of two). Not thread-safe: the memory holds its lock around it."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.size = max(16, 1 << max(0, (2 * int(capacity) - 1).bit_length()))
        self._mask = self.size - 1
        self.device = device
        self._keys = torch.full((self.size,), EMPTY, dtype=torch.long, device=device)
        self._slots = torch.zeros(self.size, dtype=torch.long, device=device)
        self.tombstones = 0

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._keys, self._slots

    def clear(self) -> None:
        self._keys.fill_(EMPTY)
        self.tombstones = 0

    def needs_rebuild(self, live: int) -> bool:
        """Whether ``live`` keys plus the tombstones load the table past ``MAX_LOAD``."""
        return live + self.tombstones > MAX_LOAD * self.size

    def _hash(self, keys: torch.Tensor) -> torch.Tensor:
        # Spatial hash (Teschner et al. 2003) over the offset coordinates; products stay
        # below 2^49, so no int64 overflow. The shift-xor mixes high bits into the mask.
        x = keys >> (2 * vk.KEY_BITS)
        y = (keys >> vk.KEY_BITS) & _COMPONENT
        z = keys & _COMPONENT
        h = (x * 73856093) ^ (y * 19349663) ^ (z * 83492791)
        h = h ^ (h >> 17)
        return h & self._mask

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """(K,) unique keys -> (K,) slot, -1 where absent."""
        slots = torch.full_like(keys, -1)
        idx = torch.arange(keys.numel(), device=self.device)
        pos = self._hash(keys)
        want = keys
        for _ in range(self.size):
            if idx.numel() == 0:
                return slots
            tk = self._keys[pos]
            hit = tk == want
            if bool(hit.any()):
                slots[idx[hit]] = self._slots[pos[hit]]
            go_on = ~hit & (tk != EMPTY)
            idx, pos, want = idx[go_on], (pos[go_on] + 1) & self._mask, want[go_on]
        raise RuntimeError("voxel hash table probe did not terminate (table corrupt)")

    def insert(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Insert unique keys known to be absent; returns the table position of each (what
        :meth:`erase` takes). Concurrent claims of one position in a round are settled by
        writing all candidates and keeping whoever reads back."""
        where = torch.empty_like(keys)
        pos = self._hash(keys)
        idx = torch.arange(keys.numel(), device=self.device)
        for _ in range(self.size):
            if idx.numel() == 0:
                return where
            tk = self._keys[pos]
            free = tk < 0
            c_idx, c_pos, c_prev = idx[free], pos[free], tk[free]
            self._keys[c_pos] = keys[c_idx]  # duplicates: one write wins
            won = self._keys[c_pos] == keys[c_idx]
            w_idx, w_pos = c_idx[won], c_pos[won]
            self._slots[w_pos] = slots[w_idx]
            where[w_idx] = w_pos
            self.tombstones -= int((c_prev[won] == TOMB).sum())
            placed = torch.zeros_like(idx, dtype=torch.bool)
            placed[torch.nonzero(free).squeeze(1)[won]] = True
            keep = ~placed
            idx, pos = idx[keep], (pos[keep] + 1) & self._mask
        raise RuntimeError("voxel hash table is full (this is a bug: it is 2x its capacity)")

    def erase(self, positions: torch.Tensor) -> None:
        """Remove the keys at these table positions (from :meth:`insert`)."""
        self._keys[positions] = TOMB
        self.tombstones += int(positions.numel())
