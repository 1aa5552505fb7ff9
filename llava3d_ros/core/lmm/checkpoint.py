"""Load and write LLaVA-3D checkpoints in the official release's layout.

Layout (a directory)::

    config.json                       model_type "llava_llama" + Llama keys + mm_* keys
    model.safetensors.index.json      {"metadata": {...}, "weight_map": {name: shard}}
    model-00001-of-0000N.safetensors  (or one model.safetensors)
    tokenizer.model + tokenizer_config.json   LLaMA SentencePiece (the release), or
    tokenizer.json ...                        whatever AutoTokenizer reads

Loading never holds two copies of the weights: the module is built on the meta device,
names and shapes are checked against the shard headers before anything is allocated,
the memory it will need is logged (and checked against free GPU memory), then storage is
allocated once and filled tensor by tensor from each shard (``safe_open``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_MAX_SCENE_TOKENS, LlavaConfig, LmmError
from .model import Llava3DModel
from .tokenizer import SPIECE_MODEL, LlamaSentencePieceTokenizer

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# Checkpoint tensors that are known and deliberately not loaded: the CLIP vision tower
# (features come from the memory; CLIP is loaded by the encoder), rotary caches saved by
# old transformers versions, and the 2D any-res newline embedding (images only).
DEFAULT_IGNORED_KEYS = (
    r"^model\.vision_tower\.",
    r"(^|\.)rotary_emb\.inv_freq$",
    r"^model\.image_newline$",
)
# Prompt allowance for the KV-cache estimate: template + question, in tokens.
PROMPT_TOKEN_ALLOWANCE = 128

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp64": torch.float64,
    "float64": torch.float64,
}


class CheckpointError(LmmError):
    """A checkpoint cannot be used: missing files, wrong names or shapes, not enough memory."""


@dataclass(frozen=True)
class TensorInfo:
    file: str  # shard file name inside the checkpoint directory
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name, e.g. "BF16"


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weight_bytes: int
    kv_cache_bytes: int
    context_tokens: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes

    def __str__(self) -> str:
        gib = 1024.0**3
        return (
            f"{self.parameters:,} parameters = {self.weight_bytes / gib:.2f} GiB "
            f"weights + {self.kv_cache_bytes / gib:.2f} GiB KV cache for "
            f"{self.context_tokens} tokens = {self.total_bytes / gib:.2f} GiB "
            "(activations not included)"
        )


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (use bf16, fp16 or fp32)") from None


def estimate_memory(model: Llava3DModel, dtype: torch.dtype, context_tokens: int) -> MemoryEstimate:
    """Weights (parameter count x bytes) + KV cache (2 x layers x kv_heads x head_dim x
    tokens x bytes). ``model`` may live on the meta device."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():  # parameters() skips tied duplicates
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    item = torch.empty((), dtype=dtype).element_size()
    cfg = model.config.llama
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    kv = 2 * int(cfg.num_hidden_layers) * kv_heads * head_dim * int(context_tokens) * item
    return MemoryEstimate(n, n * item, kv, int(context_tokens))


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or os.path.exists(name)
        or name.count("/") != 1
    )


def resolve_checkpoint(
    path: str | os.PathLike[str], *, allow_network: bool = False, revision: str | None = None
) -> Path:
    """A local directory, or a Hugging Face repo id looked up in the local cache (downloaded
    only when ``allow_network``)."""
    name = os.fspath(path)
    if _looks_like_path(name):
        p = Path(name).expanduser()
        if not p.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {p}")
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=not allow_network))
    except Exception as exc:  # hub raises several types (offline, missing, auth)
        hint = (
            ""
            if allow_network
            else (
                " (not in the Hugging Face cache and allow_network is "
                "false: download it on a connected machine)"
            )
        )
        raise CheckpointError(f"cannot resolve checkpoint {name!r}{hint}: {exc}") from exc


def read_checkpoint_index(directory: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Name -> (shard, shape, dtype) from the safetensors headers (no tensor data read)."""
    from safetensors import safe_open

    d = Path(directory)
    index = d / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"unreadable {index}: {exc}") from exc
        by_file: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(str(file), []).append(str(name))
        absent = sorted(f for f in by_file if not (d / f).is_file())
        if absent:
            raise CheckpointError(f"{index} names shard files that are missing: {absent}")
    elif (d / WEIGHTS_NAME).is_file():
        by_file = {WEIGHTS_NAME: []}  # every tensor of the single file
    else:
        bins = sorted(p.name for p in d.glob("*.bin"))
        hint = (
            f" (found PyTorch pickles {bins[:3]}: convert them to safetensors first)"
            if bins
            else ""
        )
        raise CheckpointError(f"{d} has no {INDEX_NAME} or {WEIGHTS_NAME}{hint}")
    out: dict[str, TensorInfo] = {}
    for file, names in by_file.items():
        try:
            with safe_open(str(d / file), framework="pt", device="cpu") as f:
                keys = set(f.keys())
                wanted = names or sorted(keys)
                lost = sorted(set(wanted) - keys)
                if lost:
                    raise CheckpointError(
                        f"{INDEX_NAME} maps {_fmt(lost)} to {file}, which does not hold them"
                    )
                for name in wanted:
                    sl = f.get_slice(name)
                    out[name] = TensorInfo(
                        file, tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype())
                    )
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            raise CheckpointError(f"cannot read {d / file}: {exc}") from exc
    return out


def _fmt(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_checkpoint_keys(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, TensorInfo],
    ignore: Iterable[str] = DEFAULT_IGNORED_KEYS,
    source: str = "",
) -> list[str]:
    """The names to load; raises CheckpointError listing every missing key, unexpected key
    and shape mismatch at once."""
    patterns = [re.compile(p) for p in ignore]
    ignored = sorted(n for n in found if n not in expected and any(p.search(n) for p in patterns))
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - set(ignored))
    mismatched = sorted(
        f"{n}: checkpoint {list(found[n].shape)} vs model {list(expected[n])}"
        for n in set(expected) & set(found)
        if tuple(found[n].shape) != tuple(expected[n])
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_fmt(mismatched)}")
        raise CheckpointError(
            f"checkpoint {source} does not match its config.json "
            "(LLaVA-3D layout):\n  " + "\n  ".join(parts)
        )
    if ignored:
        logger.info("not loading %d checkpoint tensors (%s)", len(ignored), _fmt(ignored, 3))
    return sorted(expected)


def load_tokenizer(
    directory: str | os.PathLike[str],
    *,
    config: LlavaConfig | None = None,
    allow_network: bool = False,
) -> Any:
    """The checkpoint's tokenizer.

    ``tokenizer.model`` present (the released LLaVA and LLaVA-3D checkpoints): the slow
    LLaMA tokenizer the official code loads (``use_fast=False``), reproduced on
    sentencepiece (:mod:`.tokenizer`; transformers 5 has none and its converted fast
    tokenizer drops the leading space of a text chunk). Otherwise ``tokenizer.json`` and
    the rest through AutoTokenizer. Pass ``config`` so AutoTokenizer does not parse
    config.json itself (it does not know model_type "llava_llama")."""
    d = Path(directory)
    if (d / SPIECE_MODEL).is_file():
        try:
            return LlamaSentencePieceTokenizer.from_directory(d)
        except ImportError as exc:
            raise CheckpointError(
                f"{d / SPIECE_MODEL} needs the sentencepiece package ({exc}); it is in the "
                "project's requirements: run make setup"
            ) from exc
        except (OSError, ValueError, RuntimeError) as exc:  # sentencepiece raises RuntimeError
            raise CheckpointError(f"cannot load the tokenizer from {d}: {exc}") from exc
    try:
        from transformers import AutoTokenizer

        kwargs: dict[str, Any] = {"local_files_only": not allow_network}
        if config is not None:
            kwargs["config"] = config.llama
        return AutoTokenizer.from_pretrained(str(directory), **kwargs)
    except Exception as exc:  # transformers raises OSError/ValueError/ImportError variously
        raise CheckpointError(f"cannot load the tokenizer from {directory}: {exc}") from exc


def _reset_rotary(model: Llava3DModel, device: torch.device) -> None:
    """Rotary inverse frequencies are non-persistent buffers computed at construction:
    after building on the meta device they must be computed again on the real one."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                with torch.device(device):
                    setattr(parent, child_name, type(child)(config=child.config))
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise CheckpointError(f"buffers not initialised after loading: {left}")


def build_empty_model(
    config: LlavaConfig,
    device: str | torch.device,
    dtype: torch.dtype,
    *,
    max_scene_tokens: int = DEFAULT_MAX_SCENE_TOKENS,
    attn_implementation: str | None = "sdpa",
) -> Llava3DModel:
    """A model with allocated but uninitialised weights on ``device`` (rotary buffers set):
    built on the meta device first, so no time is spent on random initialisation."""
    with torch.device("meta"):
        model = Llava3DModel(
            config, max_scene_tokens=max_scene_tokens, attn_implementation=attn_implementation
        )
    return materialize_(model.to(dtype), torch.device(device))


def materialize_(model: Llava3DModel, device: torch.device) -> Llava3DModel:
    """Allocate a meta-device model's storage on ``device`` (values undefined)."""
    model.to_empty(device=device)
    _reset_rotary(model, device)
    if model.tied_embeddings:
        model.llm.tie_weights()
    return model


def load_llava3d(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    max_scene_tokens: int = DEFAULT_MAX_SCENE_TOKENS,
    max_new_tokens: int = 512,
    allow_network: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = "sdpa",
    ignore_keys: Iterable[str] = DEFAULT_IGNORED_KEYS,
    check_memory: bool = True,
) -> tuple[Llava3DModel, Any]:
    """Load an official LLaVA-3D checkpoint -> (model in eval mode, tokenizer).

    ``device``: default CUDA when available. ``dtype``: default bf16 on CUDA, fp32 on CPU.
    ``max_scene_tokens`` / ``max_new_tokens`` size the KV-cache estimate (and the former
    caps scene tokens). Raises :class:`CheckpointError` / :class:`LlavaConfigError`.
    """
    directory = resolve_checkpoint(path, allow_network=allow_network, revision=revision)
    config = LlavaConfig.from_pretrained(directory)
    dev = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dt = parse_dtype(dtype, dev)
    found = read_checkpoint_index(directory)

    with torch.device("meta"):
        model = Llava3DModel(
            config, max_scene_tokens=max_scene_tokens, attn_implementation=attn_implementation
        )
    model.to(dt)
    expected = {n: tuple(p.shape) for n, p in model.official_parameters().items()}
    names = check_checkpoint_keys(expected, found, ignore_keys, source=str(directory))

    est = estimate_memory(model, dt, max_scene_tokens + PROMPT_TOKEN_ALLOWANCE + max_new_tokens)
    logger.info("LLaVA-3D %s on %s as %s needs %s", directory, dev, dt, est)
    if dev.type == "cuda" and check_memory:
        free, _ = torch.cuda.mem_get_info(dev)
        if est.total_bytes > free:
            raise CheckpointError(
                f"not enough GPU memory on {dev}: needs {est}, {free / 1024.0**3:.2f} GiB free"
            )

    tokenizer = load_tokenizer(directory, config=config, allow_network=allow_network)
    if len(tokenizer) > int(config.llama.vocab_size):
        raise CheckpointError(
            f"tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocabulary is {config.llama.vocab_size}"
        )

    materialize_(model, dev)
    params = model.official_parameters()
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(found[name].file, []).append(name)
    _load_shards(directory, by_file, params)
    model.eval().requires_grad_(False)
    return model, tokenizer


@torch.no_grad()
def _load_shards(
    directory: Path, by_file: dict[str, list[str]], params: dict[str, torch.nn.Parameter]
) -> None:
    from safetensors import safe_open

    for i, (file, names) in enumerate(sorted(by_file.items()), 1):
        logger.info("loading shard %d/%d: %s (%d tensors)", i, len(by_file), file, len(names))
        with safe_open(str(directory / file), framework="pt", device="cpu") as f:
            for name in names:
                params[name].copy_(f.get_tensor(name))  # casts to the model dtype


def write_official_checkpoint(
    model: Llava3DModel,
    tokenizer: Any,
    path: str | os.PathLike[str],
    shards: int = 2,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Save ``model`` (+ ``tokenizer``) in the release's layout: config.json, safetensors
    shards named ``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``
    (or one ``model.safetensors`` when ``shards == 1``). ``dtype``: default the model's.
    Replaces weight files already in ``path``."""
    from safetensors.torch import save_file

    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    dt = parse_dtype(dtype, torch.device("cpu")) if dtype is not None else model.dtype
    for stale in out.iterdir():
        if stale.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_RE.match(stale.name):
            stale.unlink()

    config = model.config
    raw = config.to_dict()
    raw["torch_dtype"] = str(dt).removeprefix("torch.")
    raw.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True, default=str) + "\n")

    tensors = model.official_state_dict()
    names = list(tensors)
    shards = min(shards, len(names))
    item = torch.empty((), dtype=dt).element_size()
    sizes = [tensors[n].numel() * item for n in names]
    total = sum(sizes)
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for name, size in zip(names, sizes, strict=True):
        # Shard k takes the tensors whose start falls in its 1/shards of the bytes.
        k = min(shards - 1, acc * shards // max(total, 1))
        groups[k].append(name)
        acc += size
    groups = [g for g in groups if g]
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, 1):
        file = (
            WEIGHTS_NAME if len(groups) == 1 else f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        )
        data = {n: tensors[n].to("cpu", dt).contiguous() for n in group}
        save_file(data, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
        del data
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
