"""Vectorised open-addressing hash table from voxel keys to storage slots, held in torch
tensors on the memory's device: linear probing done for all queries at once, each key's
first probes read as one window, tombstones for evicted keys and a rebuild when they pile
up. Its cost follows the number of keys asked about, not the table size, and its number
of operators (kernel launches on a GPU) neither."""

from __future__ import annotations

import torch

from llava3d_ros.core import voxel_keys as vk

EMPTY = -1  # position never used (a probe sequence ends here)
TOMB = -2  # position freed by erase (probes continue past it; inserts reuse it)
MAX_LOAD = 0.625  # rebuild when live keys + tombstones exceed this fraction of the table
_COMPONENT = (1 << vk.KEY_BITS) - 1
# Probes read at once per key: a window of WINDOW consecutive positions is one gather, so
# a lookup is ~25 operators (each a kernel launch on a GPU, ~5 us of host time) instead
# of ~10 per probe. At load <= 0.625 with linear probing nearly every key resolves within
# 8 probes (with 4, a lookup of 600 surface voxels at load 0.23 still fell back to the
# compacting loop; with 8 it did not).
WINDOW = 8
# Windows an insert tries for every key with masks before its one host check: a key
# moves on when its window is full or another key took the free position it chose. On
# the benchmark's room walk (80 inserts of 50-900 keys) 1 round left keys for the
# compacting loop (a sync per probe there) in 8 inserts, 2 rounds in none.
INSERT_ROUNDS = 2


class VoxelHashTable:
    """Keys (int64 >= 0, see ``core/voxel_keys.py``) -> slots (int64).

    ``capacity``: the most keys held at once; the table has at least twice as many
    positions (a power of two). Not thread-safe: the memory holds its lock around it."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.size = max(16, 1 << max(0, (2 * int(capacity) - 1).bit_length()))
        self._mask = self.size - 1
        self.device = device
        # One position past the table: where masked-off writes go (see _probe_rounds).
        self._scratch = self.size
        self._keys = torch.full((self.size + 1,), EMPTY, dtype=torch.long, device=device)
        self._slots = torch.zeros(self.size + 1, dtype=torch.long, device=device)
        self._window = torch.arange(WINDOW, dtype=torch.long, device=device)
        self.tombstones = 0

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._keys[: self.size], self._slots[: self.size]

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
        """(K,) unique keys -> (K,) slot, -1 where absent.

        Every key's first ``WINDOW`` probe positions are read in one gather, with no
        data-dependent shapes (nothing waits for a GPU); a key present lies before the
        first empty position of its probe sequence. One check afterwards sends the rare
        longer probe chains to the compacting loop."""
        start = self._hash(keys)
        window = (start[:, None] + self._window) & self._mask  # (K, WINDOW)
        tk = self._keys[window]
        hit = tk == keys[:, None]  # at most one per row: keys are unique in the table
        found = hit.any(dim=1)
        at = window.gather(1, hit.to(torch.uint8).argmax(dim=1, keepdim=True)).squeeze(1)
        slots = torch.where(found, self._slots[at], -1)
        active = ~found & ~(tk == EMPTY).any(dim=1)
        if not bool(active.any()):
            return slots
        idx = torch.nonzero(active).squeeze(1)
        pos, want = (start[idx] + WINDOW) & self._mask, keys[idx]
        for _ in range(self.size):
            if idx.numel() == 0:
                return slots
            tk = self._keys[pos]
            hit = tk == want
            slots[idx[hit]] = self._slots[pos[hit]]
            go_on = ~hit & (tk != EMPTY)
            idx, pos, want = idx[go_on], (pos[go_on] + 1) & self._mask, want[go_on]
        raise RuntimeError("voxel hash table probe did not terminate (table corrupt)")

    def insert(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Insert unique keys known to be absent; returns the table position of each (what
        :meth:`erase` takes). Each key takes the first free (empty or tombstone) position
        of its probe sequence; concurrent claims of one position are settled by writing
        all candidates and keeping whoever reads back.

        ``INSERT_ROUNDS`` masked rounds over every key, each reading a window of
        ``WINDOW`` positions (keys not writing this round write to a scratch position past
        the table), then one check, then the compacting loop for what is left."""
        where = torch.full_like(keys, -1)
        pos = self._hash(keys)
        active = torch.ones_like(keys, dtype=torch.bool)
        reused = torch.zeros((), dtype=torch.long, device=self.device)
        for _ in range(INSERT_ROUNDS):
            window = (pos[:, None] + self._window) & self._mask
            free = self._keys[window] < 0
            claim = active & free.any(dim=1)
            first = window.gather(1, free.to(torch.uint8).argmax(dim=1, keepdim=True))
            target = torch.where(claim, first.squeeze(1), self._scratch)
            before = self._keys[target]
            self._keys[target] = keys  # duplicates: one write wins
            won = claim & (self._keys[target] == keys)
            self._slots[torch.where(won, target, self._scratch)] = slots
            where = torch.where(won, target, where)
            reused += (won & (before == TOMB)).sum()
            active = active & ~won
            # Losers go on past the position they lost; keys without a free one, past
            # their window (every position before either is taken).
            pos = torch.where(claim, target + 1, pos + WINDOW) & self._mask
        self._keys[self._scratch] = EMPTY
        left, n_reused = torch.stack([active.any().long(), reused]).tolist()
        self.tombstones -= n_reused
        if not left:
            return where
        idx = torch.nonzero(active).squeeze(1)
        pos = pos[idx]
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
