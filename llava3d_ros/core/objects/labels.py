"""Label vocabulary: names for instances, and how well a phrase fits an instance.

Each class is a prototype in the text encoder's space: the mean embedding of its names in
a few prompt templates (how the default alignment head was trained: ``{}``, ``a {}``,
``the {}``). An instance's label distribution is a softmax over the classes of its pooled
feature's cosines divided by a temperature (the head's learned one when it has it).

A phrase the user says ("the cup", "a red mug", "ketchup bottle") is scored against an
instance as a choice between the phrase and the classes it does not name. The phrase
*owns* the classes its text embedding is close to (the nearest class when its cosine is
at least ``own_cosine``, ties within ``own_margin``, and any class at or above
``synonym_cosine``): "cup" owns the mug class, "table" owns table but not coffee table.
With ``l_q = max(cos(f, e_q), max_own cos(f, p_c)) / T`` and ``l_c = cos(f, p_c) / T``,
``p(q | f) = exp(l_q) / (exp(l_q) + sum_{c not owned} exp(l_c))``.

Why owning: the head was trained against class prototypes, so an instance of the class
is closer to the prototype than to any one phrasing of it; scored against its own
prototype a mug reached p("mug") ~ 0.02 and every threshold was meaningless. A phrase
that owns no class (out of a closed vocabulary: "sofa" for the default head) competes
with all of them and scores low everywhere, which is the honest answer; with an open
vocabulary model (CLIP) its own embedding carries it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llava3d_ros.core.encoders.base import TextEncoder

__all__ = ["LabelVocabulary", "TopLabels"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("{}", "a {}", "the {}")
#: Class names read as background when a vocabulary has no roles.
BACKGROUND_NAMES = frozenset({"floor", "wall", "ceiling", "ground", "room", "background"})
ROLES = ("object", "furniture", "background")


# Prototype texts already embedded, per text encoder: a vocabulary of ~40 classes is ~600
# sentences (seconds of MiniLM on a busy CPU), the same at every configure of a process.
_EMBEDDINGS: weakref.WeakKeyDictionary[TextEncoder, dict[tuple[str, ...], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)
_EMBEDDINGS_LOCK = threading.Lock()


def _cached_embeddings(
    text: TextEncoder, texts: list[str], encode: Callable[[Sequence[str]], torch.Tensor]
) -> torch.Tensor:
    key = tuple(texts)
    with _EMBEDDINGS_LOCK:
        hit = _EMBEDDINGS.get(text, {}).get(key)
    if hit is not None:
        return hit
    emb = encode(texts)  # one batched call
    with _EMBEDDINGS_LOCK:
        per = _EMBEDDINGS.setdefault(text, {})
        per.clear()  # one vocabulary per encoder is what processes use
        per[key] = emb
    return emb


@dataclass(frozen=True)
class TopLabels:
    names: tuple[str, ...]  # best first
    scores: tuple[float, ...]


class LabelVocabulary:
    """Class prototypes and a cache of phrase embeddings for one text encoder."""

    def __init__(
        self,
        text: TextEncoder,
        classes: Mapping[str, Sequence[str]],
        temperature: float,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        synonym_cosine: float = 0.9,
        own_cosine: float = 0.6,
        own_margin: float = 0.05,
        cache_size: int = 512,
        roles: Mapping[str, str] | None = None,
        role_prior: float = 0.2,
    ) -> None:
        if not classes:
            raise ValueError("the label vocabulary is empty")
        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        self.text = text
        self.class_names = tuple(classes)  # display name of each class: its first name
        self.display = tuple(str(names[0]) if names else c for c, names in classes.items())
        self.temperature = float(temperature)
        self.synonym_cosine = float(synonym_cosine)
        self.own_cosine = float(own_cosine)
        self.own_margin = float(own_margin)
        if not 0.0 < role_prior <= 1.0:
            raise ValueError("role_prior must be in (0, 1]")
        self.role_log_prior = float(np.log(role_prior))
        self.roles = tuple(
            (roles or {}).get(c, "background" if c in BACKGROUND_NAMES else "") for c in classes
        )
        self.background = torch.tensor([r == "background" for r in self.roles])
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        groups = [
            [t.format(n) for n in (names or [c]) for t in templates] for c, names in classes.items()
        ]
        flat = [t for g in groups for t in g]
        emb = _cached_embeddings(text, flat, self._encode)
        rows, start = [], 0
        for g in groups:
            rows.append(
                torch.nn.functional.normalize(emb[start : start + len(g)].mean(dim=0), dim=0)
            )
            start += len(g)
        self.prototypes = torch.stack(rows)  # (C, D)

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        with self._lock:
            return self.text.encode_text(list(texts)).float()

    def embed(self, phrase: str) -> torch.Tensor:
        """Unit embedding of a phrase (cached; the text encoder is the slow part)."""
        key = " ".join(phrase.lower().split())
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        emb = torch.nn.functional.normalize(self._encode([key])[0], dim=0)
        with self._lock:
            self._cache[key] = emb
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return emb

    def _role_bias(self, roles: Sequence[str] | None, k: int) -> torch.Tensor:
        """(K, C) logit bias: -inf for background classes, log(role_prior) where the
        class's role differs from the instance's (classes without a role: 0)."""
        c = len(self.class_names)
        bias = torch.zeros(k, c)
        bias[:, self.background] = -torch.inf
        if roles is not None:
            for i, role in enumerate(roles):
                for j, cr in enumerate(self.roles):
                    if cr and cr != "background" and role and cr != role:
                        bias[i, j] = self.role_log_prior
        return bias

    def distribution(
        self, features: torch.Tensor, roles: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(K, D) unit features (and the instances' roles) -> (K, C) class probabilities."""
        if len(features) == 0:
            return torch.zeros(0, len(self.class_names))
        logits = features.float() @ self.prototypes.T / self.temperature
        logits = logits + self._role_bias(roles, len(features))
        return torch.softmax(logits, dim=1)

    def top(self, probs: torch.Tensor, k: int) -> list[TopLabels]:
        k = min(k, probs.shape[1])
        values, index = torch.topk(probs, k, dim=1)
        return [
            TopLabels(tuple(self.display[i] for i in idx.tolist()), tuple(v.tolist()))
            for v, idx in zip(values, index, strict=True)
        ]

    def phrase_scores(
        self, phrase: str, features: torch.Tensor, roles: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(K,) p(phrase | instance) in [0, 1] for (K, D) unit instance features (and
        their roles: the same role bias as :meth:`distribution`)."""
        if len(features) == 0:
            return torch.zeros(0)
        q = self.embed(phrase)
        own = self.owned_classes(q)
        f = features.float()
        bias = self._role_bias(roles, len(f))
        lq = (f @ q) / self.temperature  # (K,)
        if own.any():
            own_logits = (f @ self.prototypes[own].T) / self.temperature + bias[:, own]
            lq = torch.maximum(lq, own_logits.max(dim=1).values)
        lc = (f @ self.prototypes[~own].T) / self.temperature + bias[:, ~own]  # (K, C')
        both = torch.cat([lq[:, None], lc], dim=1)
        return torch.softmax(both, dim=1)[:, 0]

    def owned_classes(self, q: torch.Tensor) -> torch.Tensor:
        """(C,) bool: the classes a phrase embedding names (see the module doc)."""
        sims = self.prototypes @ q
        best = sims.max()
        near = (sims >= self.own_cosine) & (sims >= best - self.own_margin)
        return near | (sims >= self.synonym_cosine)
