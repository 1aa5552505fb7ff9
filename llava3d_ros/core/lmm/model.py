"""LLaVA as torch modules: LLaVA-3D (3D position embedding, projector, location prompt,
Llama LLM) and the LLaVA-1.5 family (projector, Llama LLM: one image's patch features).

Scene tokens come from the patch memory already pooled per 0.2 m voxel (positions (T, 3),
CLIP features (T, 1024)); this module never sees images. Per token, as LLaVA-3D does::

    feature + PE(position)  ->  mm_projector  ->  LLM input embedding

where PE is the learned MLP 3 -> mm_hidden (Linear, LayerNorm, ReLU, Linear). One
difference from the release, by construction of the memory: LLaVA-3D adds PE to every
patch and then voxel-averages, here PE is applied to the voxel's mean position after
averaging (mean(f) + PE(mean(x)) instead of mean(f + PE(x))). Inside a 0.2 m cell the
two differ by the MLP's curvature over 0.2 m; not measured with real weights.

A location prompt (``[x,y,z]`` in the question) is one ``<boxes>`` slot whose embedding is a
second MLP 3 -> hidden of the point; it bypasses the projector.

Parameter names: :func:`to_official_name` maps this module's state-dict names onto the
official checkpoint's (``model.mm_projector.0.weight``...), see :data:`OFFICIAL_PREFIXES`.

:class:`Llava2DModel` is the LLaVA-1.5 layout (Spatial-LLaVA and other fine-tunes): the
same LLM and projector names, no ``model.video_tower.*``; its image tokens are the CLIP
tower's patch features of one image, projected (``encode_images`` in LLaVA).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import DEFAULT_MAX_SCENE_TOKENS, FAMILY_2D, FAMILY_3D, LlavaConfig, LmmError

logger = logging.getLogger(__name__)

# Placeholder ids inside a tokenized prompt (negative: never a vocabulary id), as in LLaVA.
IMAGE_TOKEN_INDEX = -200
LOC_TOKEN_INDEX = -300

# (this module's prefix, official checkpoint prefix). Longer official prefixes first so the
# reverse mapping picks "model.mm_projector." before "model.".
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("scene_pos_embed.", "model.video_tower.video_tower.positional_embedding."),
    ("location_embed.", "model.video_tower.prompt_encoder.pos_emb3d."),
    ("mm_projector.", "model.mm_projector."),
    ("llm.lm_head.", "lm_head."),
    ("llm.model.", "model."),
)
# The LLaVA-1.5 family: the same names without the 3D modules.
OFFICIAL_PREFIXES_2D: tuple[tuple[str, str], ...] = OFFICIAL_PREFIXES[2:]
# Checkpoint tensors that only LLaVA-3D has: how the family shows in the weights.
VIDEO_TOWER_PREFIX = "model.video_tower."


def to_official_name(name: str, prefixes: Sequence[tuple[str, str]] = OFFICIAL_PREFIXES) -> str:
    for ours, theirs in prefixes:
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise KeyError(f"no official name for parameter {name!r}")


def from_official_name(name: str, prefixes: Sequence[tuple[str, str]] = OFFICIAL_PREFIXES) -> str:
    for ours, theirs in prefixes:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    raise KeyError(f"{name!r} is not a LLaVA parameter name")


class PositionEmbeddingMLP(nn.Module):
    """Learned absolute 3D position embedding: Linear, LayerNorm, ReLU, Linear.

    The submodule is called ``position_embedding_head`` so that its parameters are named
    ``position_embedding_head.{0,1,3}.*`` like the release's."""

    def __init__(self, out_dim: int, in_dim: int = 3) -> None:
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
            nn.ReLU(),
            nn.Linear(out_dim, out_dim),
        )

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.position_embedding_head(xyz)


def build_projector(config: LlavaConfig) -> nn.Module:
    """``linear`` -> one Linear (names ``weight``/``bias``); ``mlpNx_gelu`` -> Sequential of
    Linear, GELU, Linear... (names ``0.*``, ``2.*``...), the release's layouts."""
    d_in, d = int(config.mm_hidden_size), config.hidden_size
    if config.projector_depth == 1 and config.mm_projector_type == "linear":
        return nn.Linear(d_in, d)
    layers: list[nn.Module] = [nn.Linear(d_in, d)]
    for _ in range(config.projector_depth - 1):
        layers += [nn.GELU(), nn.Linear(d, d)]
    return nn.Sequential(*layers)


def farthest_point_indices(positions: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` points spread over ``positions`` (N, 3) by farthest-point sampling,
    returned sorted (input order kept). Deterministic: seeded at the lexicographically
    smallest point, ties broken by the lowest index."""
    n = int(positions.shape[0])
    if k >= n:
        return torch.arange(n, device=positions.device)
    p = positions.detach().to(torch.float64)
    host = p.cpu().numpy()
    seed = int(np.lexsort((host[:, 2], host[:, 1], host[:, 0]))[0])
    chosen = torch.empty(k, dtype=torch.long, device=p.device)
    dist = torch.full((n,), float("inf"), dtype=torch.float64, device=p.device)
    idx = seed
    for i in range(k):
        chosen[i] = idx
        dist = torch.minimum(dist, ((p - p[idx]) ** 2).sum(1))
        idx = int(torch.argmax(dist))  # argmax returns the first maximum: stable ties
    return torch.sort(chosen).values


class LlavaLanguageModel(nn.Module):
    """What both families share: ``llm`` (:class:`transformers.LlamaForCausalLM`) and
    ``mm_projector``, the official names, and splicing placeholders into embeddings.
    No vision tower: image features come from the encoder (or the memory)."""

    family = ""
    official_prefixes: tuple[tuple[str, str], ...] = OFFICIAL_PREFIXES_2D

    def __init__(self, config: LlavaConfig, attn_implementation: str | None = "sdpa") -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        if config.family != self.family:
            raise LmmError(
                f"a {config.family} config cannot build {type(self).__name__} ({self.family})"
            )
        self.config = config
        if attn_implementation is not None:
            config.llama._attn_implementation = attn_implementation
        self.llm = LlamaForCausalLM(config.llama)
        self.mm_projector = build_projector(config)

    # -- bookkeeping -----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.llm.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.model.embed_tokens.weight.dtype

    @property
    def tied_embeddings(self) -> bool:
        return bool(getattr(self.config.llama, "tie_word_embeddings", False))

    def official_parameters(self) -> dict[str, nn.Parameter]:
        """Official checkpoint name -> parameter, every tensor a checkpoint must hold
        (``lm_head.weight`` left out when it is tied to the input embedding)."""
        out: dict[str, nn.Parameter] = {}
        for name, param in self.named_parameters(remove_duplicate=False):
            official = to_official_name(name, self.official_prefixes)
            if official == "lm_head.weight" and self.tied_embeddings:
                continue
            out[official] = param
        return out

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.official_parameters().items()}

    # -- inputs ----------------------------------------------------------------------

    def assemble_inputs_embeds(
        self,
        input_ids: Sequence[int],
        image_embeds: torch.Tensor,
        location_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids with IMAGE/LOC placeholders -> (1, N, hidden) ``inputs_embeds``.

        The single IMAGE placeholder becomes the T image (or scene) rows, each LOC
        placeholder one location row (in order). Text runs are embedded with the LLM's own
        table."""
        ids = [int(i) for i in input_ids]
        n_img = ids.count(IMAGE_TOKEN_INDEX)
        n_loc = ids.count(LOC_TOKEN_INDEX)
        n_given = 0 if location_embeds is None else int(location_embeds.shape[0])
        if n_img != 1:
            raise LmmError(f"prompt must hold exactly one image placeholder, found {n_img}")
        if n_loc != n_given:
            raise LmmError(
                f"prompt has {n_loc} location placeholders but {n_given} locations were given"
            )
        vocab = int(self.llm.config.vocab_size)
        bad = [
            i
            for i in ids
            if i >= vocab or (i < 0 and i not in (IMAGE_TOKEN_INDEX, LOC_TOKEN_INDEX))
        ]
        if bad:
            raise LmmError(
                f"token ids {bad[:5]} outside the model's vocabulary ({vocab}); "
                "tokenizer and checkpoint do not match"
            )
        text_ids = torch.tensor([i for i in ids if i >= 0], dtype=torch.long, device=self.device)
        text = self.llm.get_input_embeddings()(text_ids)
        pieces: list[torch.Tensor] = []
        t_i = 0
        loc_i = 0
        run = 0
        for i in ids:
            if i >= 0:
                run += 1
                continue
            if run:
                pieces.append(text[t_i : t_i + run])
                t_i += run
                run = 0
            if i == IMAGE_TOKEN_INDEX:
                pieces.append(image_embeds.to(text.dtype))
            else:
                assert location_embeds is not None  # n_loc == n_given > 0
                pieces.append(location_embeds[loc_i : loc_i + 1].to(text.dtype))
                loc_i += 1
        if run:
            pieces.append(text[t_i : t_i + run])
        return torch.cat(pieces, 0).unsqueeze(0)


class Llava2DModel(LlavaLanguageModel):
    """The LLaVA-1.5 family's language side: ``image features -> mm_projector -> LLM``.

    Features are the CLIP tower's ``hidden_states[mm_vision_select_layer]`` patch tokens
    of one preprocessed image ((576, 1024) for ViT-L/14-336), in the tower's row-major
    patch order."""

    family = FAMILY_2D
    official_prefixes = OFFICIAL_PREFIXES_2D

    def embed_image(self, features: Any) -> torch.Tensor:
        """(P, mm_hidden) patch features -> (P, hidden) LLM inputs."""
        feat = torch.as_tensor(features)
        width = int(self.config.mm_hidden_size)
        if feat.ndim != 2 or feat.shape[1] != width or feat.shape[0] == 0:
            raise LmmError(
                f"image features must be (P > 0, {width}) "
                f"({self.config.vision_feature_spec}), got {tuple(feat.shape)}"
            )
        if not torch.isfinite(feat).all():
            raise LmmError("image features contain NaN or inf")
        return self.mm_projector(feat.to(self.device, self.dtype))


class Llava3DModel(LlavaLanguageModel):
    """LLaVA-3D's language-model tier (no vision tower: features come from the memory).

    Submodules: ``llm`` (:class:`transformers.LlamaForCausalLM`), ``mm_projector``,
    ``scene_pos_embed`` (3 -> mm_hidden), ``location_embed`` (3 -> hidden).
    ``max_scene_tokens`` caps the scene tokens fed to the LLM (LLaVA-3D: 2560).
    """

    family = FAMILY_3D
    official_prefixes = OFFICIAL_PREFIXES

    def __init__(
        self,
        config: LlavaConfig,
        max_scene_tokens: int = DEFAULT_MAX_SCENE_TOKENS,
        attn_implementation: str | None = "sdpa",
    ) -> None:
        if max_scene_tokens < 1:
            raise ValueError(f"max_scene_tokens must be >= 1, got {max_scene_tokens}")
        super().__init__(config, attn_implementation)
        self.max_scene_tokens = int(max_scene_tokens)
        self.scene_pos_embed = PositionEmbeddingMLP(int(config.mm_hidden_size))
        self.location_embed = PositionEmbeddingMLP(config.hidden_size)

    def cap_scene(
        self, positions: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At most ``max_scene_tokens`` tokens, chosen by farthest-point sampling.

        The memory's ``pool`` already caps with a spatially fair rule; this only fires
        for callers that bring more tokens (LLaVA-3D takes a random subset instead)."""
        t = int(positions.shape[0])
        if t <= self.max_scene_tokens:
            return positions, features
        keep = farthest_point_indices(positions, self.max_scene_tokens)
        logger.info(
            "scene has %d tokens, keeping %d by farthest-point sampling", t, self.max_scene_tokens
        )
        return positions[keep], features[keep]

    def _check_scene(self, positions: Any, features: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.as_tensor(positions)
        feat = torch.as_tensor(features)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise LmmError(f"scene_positions must be (T, 3), got {tuple(pos.shape)}")
        width = int(self.config.mm_hidden_size)
        if feat.ndim != 2 or feat.shape[1] != width:
            raise LmmError(
                f"scene_features must be (T, {width}) "
                f"({self.config.vision_feature_spec}), got {tuple(feat.shape)}"
            )
        if pos.shape[0] != feat.shape[0]:
            raise LmmError(f"{pos.shape[0]} scene positions but {feat.shape[0]} feature rows")
        if not (torch.isfinite(pos).all() and torch.isfinite(feat).all()):
            raise LmmError("scene positions/features contain NaN or inf")
        return pos, feat

    def embed_scene(self, positions: Any, features: Any) -> torch.Tensor:
        """(T, 3) positions + (T, mm_hidden) features -> (min(T, cap), hidden) LLM inputs."""
        pos, feat = self._check_scene(positions, features)
        pos, feat = self.cap_scene(pos, feat)
        pos = pos.to(self.device, self.dtype)
        feat = feat.to(self.device, self.dtype)
        return self.mm_projector(feat + self.scene_pos_embed(pos))

    def embed_locations(self, points: Any) -> torch.Tensor:
        """(L, 3) click points -> (L, hidden) ``<boxes>`` embeddings (no projector)."""
        pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 3)
        if not torch.isfinite(pts).all():
            raise LmmError("location coordinates must be finite")
        return self.location_embed(pts.to(self.device, self.dtype))
