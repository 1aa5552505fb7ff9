"""Load and write LLaVA checkpoints (LLaVA-3D and the LLaVA-1.5 family) in the official
releases' layout.

Layout (a directory)::

    config.json                       model_type "llava_llama" + Llama keys + mm_* keys
    model.safetensors.index.json      {"metadata": {...}, "weight_map": {name: shard}}
    model-00001-of-0000N.safetensors  (or one model.safetensors)
    pytorch_model.bin.index.json      or the same as PyTorch files (LLaVA-1.5's release:
    pytorch_model-00001-of-0000N.bin  read with ``weights_only``, never unpickled freely)
    tokenizer.model + tokenizer_config.json   LLaMA SentencePiece (the release), or
    tokenizer.json ...                        whatever AutoTokenizer reads

The family is read from config.json (``mm_video_tower``) and checked against the tensor
names (``model.video_tower.*`` only in LLaVA-3D); a checkpoint of the other family than
the caller asked for is refused with a message that says which it is.

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

from .config import (
    DEFAULT_MAX_SCENE_TOKENS,
    FAMILY_2D,
    FAMILY_3D,
    FAMILY_NAMES,
    LlavaConfig,
    LmmError,
)
from .model import VIDEO_TOWER_PREFIX, Llava2DModel, Llava3DModel, LlavaLanguageModel
from .tokenizer import SPIECE_MODEL, LlamaSentencePieceTokenizer

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
BIN_WEIGHTS_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
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


def estimate_memory(
    model: LlavaLanguageModel, dtype: torch.dtype, context_tokens: int
) -> MemoryEstimate:
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


def _weight_files(d: Path) -> dict[str, list[str]]:
    """Weight file -> tensor names it holds per the index ([] = every tensor of the file)."""
    for index_name, single in ((INDEX_NAME, WEIGHTS_NAME), (BIN_INDEX_NAME, BIN_WEIGHTS_NAME)):
        index = d / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                by_file: dict[str, list[str]] = {}
                for name, file in weight_map.items():
                    by_file.setdefault(str(file), []).append(str(name))
            except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"unreadable {index}: {exc}") from exc
            bad = sorted(f for f in by_file if Path(f).name != f)
            if bad:  # a hostile index must not point outside the directory
                raise CheckpointError(f"{index} names files outside the checkpoint: {bad[:3]}")
            absent = sorted(f for f in by_file if not (d / f).is_file())
            if absent:
                raise CheckpointError(f"{index} names shard files that are missing: {absent}")
            return by_file
        if (d / single).is_file():
            return {single: []}
    raise CheckpointError(
        f"{d} has no {INDEX_NAME}, {WEIGHTS_NAME}, {BIN_INDEX_NAME} or {BIN_WEIGHTS_NAME}"
    )


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch state-dict file, memory-mapped, with the safe unpickler (tensors only)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files saved before torch 1.6's zip format cannot be mapped
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise CheckpointError(f"{path} is not a state dict of named tensors")
    return data


class _ShardReader:
    """Read tensors of one weight file, safetensors or PyTorch, by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._bin: dict[str, torch.Tensor] | None = None
        self._st: Any = None

    def __enter__(self) -> _ShardReader:
        if self.path.suffix == ".bin":
            self._bin = _load_bin(self.path)
        else:
            from safetensors import safe_open

            self._st = safe_open(str(self.path), framework="pt", device="cpu").__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._st is not None:
            self._st.__exit__(*exc)
        self._bin = self._st = None

    def keys(self) -> set[str]:
        return set(self._bin) if self._bin is not None else set(self._st.keys())

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        if self._bin is not None:
            t = self._bin[name]
            return tuple(int(v) for v in t.shape), str(t.dtype).removeprefix("torch.")
        sl = self._st.get_slice(name)
        return tuple(int(v) for v in sl.get_shape()), str(sl.get_dtype())

    def tensor(self, name: str) -> torch.Tensor:
        return self._bin[name] if self._bin is not None else self._st.get_tensor(name)


def read_checkpoint_index(directory: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Name -> (shard, shape, dtype) from the safetensors headers (PyTorch files are
    memory-mapped: no tensor data read either)."""
    d = Path(directory)
    out: dict[str, TensorInfo] = {}
    for file, names in _weight_files(d).items():
        try:
            with _ShardReader(d / file) as f:
                keys = f.keys()
                wanted = names or sorted(keys)
                lost = sorted(set(wanted) - keys)
                if lost:
                    raise CheckpointError(
                        f"the index maps {_fmt(lost)} to {file}, which does not hold them"
                    )
                for name in wanted:
                    shape, dtype = f.info(name)
                    out[name] = TensorInfo(file, shape, dtype)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors/torch raise their own types on corrupt files
            raise CheckpointError(f"cannot read {d / file}: {exc}") from exc
    return out


def detect_family(config: LlavaConfig, found: dict[str, TensorInfo], source: str = "") -> str:
    """The checkpoint's family (FAMILY_3D / FAMILY_2D) from config.json, refused when the
    weights say otherwise (a hand-edited or mixed-up directory)."""
    has_3d = any(n.startswith(VIDEO_TOWER_PREFIX) for n in found)
    if config.family == FAMILY_3D and not has_3d:
        raise CheckpointError(
            f"checkpoint {source}: config.json names mm_video_tower {config.mm_video_tower!r} "
            f"(LLaVA-3D) but the weights hold no {VIDEO_TOWER_PREFIX}* tensors: a LLaVA-1.5 "
            "family checkpoint with a LLaVA-3D config?"
        )
    if config.family == FAMILY_2D and has_3d:
        raise CheckpointError(
            f"checkpoint {source}: config.json has no mm_video_tower (LLaVA-1.5 family) but "
            f"the weights hold {VIDEO_TOWER_PREFIX}* tensors (LLaVA-3D): config and weights "
            "do not match"
        )
    return config.family


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
            "(official LLaVA layout):\n  " + "\n  ".join(parts)
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


def _reset_rotary(model: LlavaLanguageModel, device: torch.device) -> None:
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


def model_for_config(
    config: LlavaConfig, max_scene_tokens: int, attn_implementation: str | None
) -> LlavaLanguageModel:
    if config.family == FAMILY_3D:
        return Llava3DModel(
            config, max_scene_tokens=max_scene_tokens, attn_implementation=attn_implementation
        )
    return Llava2DModel(config, attn_implementation=attn_implementation)


def build_empty_model(
    config: LlavaConfig,
    device: str | torch.device,
    dtype: torch.dtype,
    *,
    max_scene_tokens: int = DEFAULT_MAX_SCENE_TOKENS,
    attn_implementation: str | None = "sdpa",
) -> Any:
    """A model of the config's family (:class:`Llava3DModel` or :class:`Llava2DModel`)
    with allocated but uninitialised weights on ``device`` (rotary buffers set): built on
    the meta device first, so no time is spent on random initialisation."""
    with torch.device("meta"):
        model = model_for_config(config, max_scene_tokens, attn_implementation)
    return materialize_(model.to(dtype), torch.device(device))


def materialize_(model: LlavaLanguageModel, device: torch.device) -> LlavaLanguageModel:
    """Allocate a meta-device model's storage on ``device`` (values undefined)."""
    model.to_empty(device=device)
    _reset_rotary(model, device)
    if model.tied_embeddings:
        model.llm.tie_weights()
    return model


def _wrong_family(directory: Path, found: str, wanted: str) -> CheckpointError:
    use = {
        FAMILY_3D: "it answers about the scene memory (the LLaVA-3D tier: load_llava3d, "
        "node parameter lmm.checkpoint)",
        FAMILY_2D: "it answers about one camera image (the view tier: load_llava2d, node "
        "parameter view.checkpoint)",
    }[found]
    return CheckpointError(
        f"{directory} is a {FAMILY_NAMES[found]} checkpoint, not {FAMILY_NAMES[wanted]}: {use}"
    )


def load_llava(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    family: str | None = None,
    max_scene_tokens: int = DEFAULT_MAX_SCENE_TOKENS,
    max_new_tokens: int = 512,
    image_tokens: int = 576,
    allow_network: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = "sdpa",
    ignore_keys: Iterable[str] = DEFAULT_IGNORED_KEYS,
    check_memory: bool = True,
) -> tuple[Any, Any]:
    """Load an official LLaVA checkpoint of either family -> (model in eval mode,
    tokenizer). ``family``: FAMILY_3D or FAMILY_2D to insist on one (a checkpoint of the
    other is refused with a CheckpointError that says which it is); None takes either.

    ``device``: default CUDA when available. ``dtype``: default bf16 on CUDA, fp32 on CPU.
    ``max_scene_tokens`` (3D) / ``image_tokens`` (2D) and ``max_new_tokens`` size the
    KV-cache estimate (the former also caps scene tokens). Raises
    :class:`CheckpointError` / :class:`LlavaConfigError`."""
    directory = resolve_checkpoint(path, allow_network=allow_network, revision=revision)
    config = LlavaConfig.from_pretrained(directory)
    dev = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dt = parse_dtype(dtype, dev)
    found = read_checkpoint_index(directory)
    got = detect_family(config, found, str(directory))
    if family is not None and got != family:
        raise _wrong_family(directory, got, family)

    with torch.device("meta"):
        model = model_for_config(config, max_scene_tokens, attn_implementation)
    model.to(dt)
    expected = {n: tuple(p.shape) for n, p in model.official_parameters().items()}
    names = check_checkpoint_keys(expected, found, ignore_keys, source=str(directory))

    visual = max_scene_tokens if got == FAMILY_3D else image_tokens
    est = estimate_memory(model, dt, visual + PROMPT_TOKEN_ALLOWANCE + max_new_tokens)
    logger.info("%s %s on %s as %s needs %s", FAMILY_NAMES[got], directory, dev, dt, est)
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


def load_llava3d(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> tuple[Llava3DModel, Any]:
    """Load an official LLaVA-3D checkpoint -> (model, tokenizer); a LLaVA-1.5-family
    checkpoint is refused. Keyword arguments as :func:`load_llava`."""
    model, tokenizer = load_llava(path, device, dtype, family=FAMILY_3D, **kwargs)
    assert isinstance(model, Llava3DModel)
    return model, tokenizer


def load_llava2d(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> tuple[Llava2DModel, Any]:
    """Load an official LLaVA-1.5-family checkpoint (LLaVA-1.5, Spatial-LLaVA...) ->
    (model, tokenizer); a LLaVA-3D checkpoint is refused. Keyword arguments as
    :func:`load_llava`."""
    model, tokenizer = load_llava(path, device, dtype, family=FAMILY_2D, **kwargs)
    assert isinstance(model, Llava2DModel)
    return model, tokenizer


@torch.no_grad()
def _load_shards(
    directory: Path, by_file: dict[str, list[str]], params: dict[str, torch.nn.Parameter]
) -> None:
    for i, (file, names) in enumerate(sorted(by_file.items()), 1):
        logger.info("loading shard %d/%d: %s (%d tensors)", i, len(by_file), file, len(names))
        with _ShardReader(directory / file) as f:
            for name in names:
                params[name].copy_(f.tensor(name))  # casts to the model dtype


def write_official_checkpoint(
    model: LlavaLanguageModel,
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
