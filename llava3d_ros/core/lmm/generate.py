"""Question answering over the scene tokens: prefill once, then a token-by-token loop.

The loop is ours rather than ``generate()``: one forward per token on the LLM's KV cache,
so cancellation is checked between tokens, text deltas are streamed as they become
final, and greedy decoding is a plain argmax (same call -> same tokens).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .config import LmmError
from .model import Llava2DModel, Llava3DModel, LlavaLanguageModel
from .prompt import (
    DEFAULT_DESCRIBE_QUESTION,
    DEFAULT_TEMPLATE,
    LLAVA_V1,
    VICUNA_V1,
    ConversationTemplate,
    TextBox,
    build_prompt,
    parse_boxes,
    template_named,
    tokenize_prompt,
)
from .scene_frame import SceneFrame

logger = logging.getLogger(__name__)

# Stop reasons reported in LmmAnswer.stop_reason.
STOP_EOS = "eos"
STOP_STRING = "stop_string"
STOP_MAX_TOKENS = "max_new_tokens"
STOP_CANCELLED = "cancelled"


# "static": keys/values preallocated for prompt + max_new_tokens, written in place (measured
# 1.5x faster decode than "dynamic" on CPU at 2.6k context, which re-concatenates each step).
KV_CACHES = ("static", "dynamic")


@runtime_checkable
class _EventLike(Protocol):
    def is_set(self) -> bool: ...


CancelSource = threading.Event | _EventLike | Callable[[], bool]


def _cancelled(cancel: CancelSource | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, _EventLike):  # threading.Event and look-alikes
        return bool(cancel.is_set())
    return bool(cancel())


@dataclass
class PreparedInput:
    """Everything the LLM gets for one question (``inputs_embeds`` is (1, N, hidden))."""

    prompt: str
    input_ids: list[int]  # with IMAGE/LOC placeholders
    inputs_embeds: torch.Tensor
    scene_tokens: int
    locations: tuple[tuple[float, float, float], ...]


@dataclass
class LmmAnswer:
    """One answer. ``text`` is exactly the concatenation of the streamed deltas."""

    text: str
    boxes: list[TextBox]
    num_tokens: int  # generated tokens (EOS not counted)
    prefill_s: float  # scene embedding + prompt forward, seconds
    decode_tokens_per_s: float  # generated tokens / time after prefill
    cancelled: bool
    stop_reason: str = STOP_MAX_TOKENS
    prompt_tokens: int = 0  # LLM input length (text + scene + location tokens)
    scene_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)


def _cache_argument(llm: Any) -> str:
    """The LLM's name for its KV-cache argument: transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40)."""
    params = inspect.signature(type(llm).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def select_token(
    logits: torch.Tensor, temperature: float, top_p: float | None, generator: torch.Generator | None
) -> int:
    """Greedy when ``temperature <= 0``; else temperature + nucleus (top-p) sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = (torch.cumsum(sorted_p, 0) - sorted_p) < top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        pick = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


class _TextStream:
    """Incremental detokenization with a hold-back: a delta is emitted only once no stop
    string can still start inside it, and never ends in a partial UTF-8 character."""

    def __init__(
        self, tokenizer: Any, stop: Sequence[str], on_text: Callable[[str], None] | None
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.on_text = on_text
        self.emitted = ""
        self.full = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def update(self, ids: list[int]) -> bool:
        """Decode ``ids``; returns True when a stop string has appeared (text cut there)."""
        self.full = self._decode(ids)
        hit = [i for i in (self.full.find(s) for s in self.stop) if i >= 0]
        if hit:
            self.full = self.full[: min(hit)]
            return True
        safe = len(self.full)
        if self.full.endswith("\ufffd"):  # incomplete multi-byte character so far
            safe = len(self.full.rstrip("\ufffd"))
        head = self.full[:safe]
        hold = 0  # longest tail that could still grow into a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, safe), hold, -1):
                if head.endswith(s[:k]):
                    hold = k
                    break
        self._emit(head[: safe - hold])
        return False

    def _emit(self, upto: str) -> None:
        if len(upto) <= len(self.emitted) or not upto.startswith(self.emitted):
            return  # detokenization revised earlier text: wait for the final flush
        delta = upto[len(self.emitted) :]
        self.emitted = upto
        if self.on_text is not None:
            self.on_text(delta)

    def finish(self) -> str:
        final = self.full.rstrip("\ufffd")
        if final.startswith(self.emitted):
            self._emit(final)
        else:  # cannot retract streamed text: keep what the listener already has
            logger.warning("detokenized text changed after streaming; keeping streamed text")
        return self.emitted


class LlavaChat:
    """The part both families share: one answer at a time, prefill once, then a
    token-by-token loop on the KV cache with streaming, stop strings and cancel.
    Subclasses build :class:`PreparedInput` from their inputs (scene or image)."""

    def __init__(
        self,
        model: LlavaLanguageModel,
        tokenizer: Any,
        template: ConversationTemplate = VICUNA_V1,
        kv_cache: str = "static",
        name: str = "",
    ) -> None:
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, got {kv_cache!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.kv_cache = kv_cache
        self.name = name  # what answered, for results (the checkpoint as configured)
        self._lock = threading.Lock()
        eos = {getattr(tokenizer, "eos_token_id", None)}
        cfg_eos = getattr(model.config.llama, "eos_token_id", None)
        eos |= set(cfg_eos) if isinstance(cfg_eos, (list, tuple)) else {cfg_eos}
        self.eos_ids = frozenset(int(e) for e in eos if e is not None)

    @property
    def busy(self) -> bool:
        """An answer is being generated (a second call would wait for it)."""
        return self._lock.locked()

    def _answer(
        self,
        prepare: Callable[[], PreparedInput],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str],
        on_text: Callable[[str], None] | None,
        cancel: CancelSource | None,
        ignore_eos: bool,
    ) -> LmmAnswer:
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        with self._lock:
            if _cancelled(cancel):
                return LmmAnswer("", [], 0, 0.0, 0.0, True, STOP_CANCELLED)
            device = self.model.device
            _sync(device)
            t0 = time.perf_counter()
            prepared = prepare()
            return self._generate(
                prepared,
                t0,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                stop=stop,
                on_text=on_text,
                cancel=cancel,
                ignore_eos=ignore_eos,
            )

    @torch.inference_mode()
    def _generate(
        self,
        prepared: PreparedInput,
        t0: float,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str],
        on_text: Callable[[str], None] | None,
        cancel: CancelSource | None,
        ignore_eos: bool,
    ) -> LmmAnswer:
        from transformers import DynamicCache, StaticCache

        llm = self.model.llm
        device = self.model.device
        n_prompt = int(prepared.inputs_embeds.shape[1])
        limit = self.model.config.context_length
        if n_prompt >= limit:
            raise LmmError(f"prompt is {n_prompt} tokens, the model's context is {limit}")
        trained = self.model.config.tokenizer_model_max_length
        if trained is not None and n_prompt > int(trained):
            # The release truncates its inputs to this length; we keep the whole prompt.
            logger.warning(
                "prompt is %d tokens, longer than tokenizer_model_max_length %s", n_prompt, trained
            )
        if n_prompt + max_new_tokens > limit:
            logger.warning(
                "max_new_tokens %d cut to %d to fit the %d-token context",
                max_new_tokens,
                limit - n_prompt,
                limit,
            )
            max_new_tokens = limit - n_prompt
        generator = None
        if seed is not None and temperature > 0:
            generator = torch.Generator(device=device).manual_seed(int(seed))

        cache = (
            StaticCache(config=llm.config, max_cache_len=n_prompt + max(max_new_tokens, 1))
            if self.kv_cache == "static"
            else DynamicCache(config=llm.config)
        )
        kv = {_cache_argument(llm): cache}
        out = llm(inputs_embeds=prepared.inputs_embeds, use_cache=True, logits_to_keep=1, **kv)
        logits = out.logits[0, -1]
        _sync(device)
        t_prefill = time.perf_counter()

        stream = _TextStream(self.tokenizer, stop, on_text)
        tokens: list[int] = []
        reason = STOP_MAX_TOKENS
        while len(tokens) < max_new_tokens:
            if _cancelled(cancel):
                reason = STOP_CANCELLED
                break
            tok = select_token(logits, temperature, top_p, generator)
            if tok in self.eos_ids and not ignore_eos:
                reason = STOP_EOS
                break
            tokens.append(tok)
            if stream.update(tokens):
                reason = STOP_STRING
                break
            if len(tokens) == max_new_tokens:
                break
            step = torch.tensor([[tok]], device=device)
            out = llm(input_ids=step, use_cache=True, **kv)
            logits = out.logits[0, -1]
        text = stream.finish()
        _sync(device)
        t_end = time.perf_counter()
        decode_s = t_end - t_prefill
        return LmmAnswer(
            text=text,
            boxes=parse_boxes(text),
            num_tokens=len(tokens),
            prefill_s=t_prefill - t0,
            decode_tokens_per_s=len(tokens) / decode_s if tokens and decode_s > 0 else 0.0,
            cancelled=reason == STOP_CANCELLED,
            stop_reason=reason,
            prompt_tokens=n_prompt,
            scene_tokens=prepared.scene_tokens,
            token_ids=tokens,
        )


class Llava3DChat(LlavaChat):
    """Ask LLaVA-3D about the scene in the memory. Thread-safe (one answer at a time)::

    chat = Llava3DChat.load("/models/llava-3d-7b", device="cuda")
    pos, feat = memory.pool(kind="vision", voxel_size=0.2, max_tokens=2560)
    chat.answer("What is on the table?", pos, feat, on_text=print).text
    """

    model: Llava3DModel

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        kv_cache: str = "static",
        template: str = DEFAULT_TEMPLATE,
        **load_kwargs: Any,
    ) -> Llava3DChat:
        """``load_llava3d(path, device, dtype, **load_kwargs)`` wrapped in a chat that
        renders prompts in the named conversation template."""
        from .checkpoint import load_llava3d

        conversation = template_named(template)  # before the weights: fail fast
        model, tokenizer = load_llava3d(path, device, dtype, **load_kwargs)
        return cls(model, tokenizer, template=conversation, kv_cache=kv_cache, name=str(path))

    @torch.inference_mode()
    def prepare(
        self,
        question: str,
        scene_positions: Any,
        scene_features: Any,
        *,
        location: Any = None,
        history: Sequence[tuple[str, str]] = (),
        frame: SceneFrame | None = None,
    ) -> PreparedInput:
        """Prompt -> token ids -> ``inputs_embeds`` with scene and location rows in place.
        ``frame``: positions and locations (written or given) are map coordinates, moved
        into that scene frame before their embeddings (``PreparedInput.locations`` are in
        the scene frame)."""
        prompt = build_prompt(
            question,
            location=location,
            history=history,
            template=self.template,
            use_im_start_end=self.model.config.mm_use_im_start_end,
        )
        ids = tokenize_prompt(self.tokenizer, prompt.text)
        locations = prompt.locations
        if frame is not None:
            pos = torch.as_tensor(scene_positions)
            r = torch.as_tensor(frame.rotation, dtype=torch.float64, device=pos.device)
            o = torch.as_tensor(frame.origin, dtype=torch.float64, device=pos.device)
            scene_positions = (pos.to(torch.float64) @ r.T - o).to(torch.float32)
            if locations:
                moved = frame.to_scene(np.asarray(locations, dtype=np.float64))
                locations = tuple((float(x), float(y), float(z)) for x, y, z in moved)
        scene = self.model.embed_scene(scene_positions, scene_features)
        if scene.shape[0] == 0:
            logger.warning("no scene tokens: the model answers from the text alone")
        locs = (
            self.model.embed_locations(locations)
            if locations
            else scene.new_zeros((0, self.model.config.hidden_size))
        )
        embeds = self.model.assemble_inputs_embeds(ids, scene, locs)
        return PreparedInput(
            prompt=prompt.text,
            input_ids=ids,
            inputs_embeds=embeds,
            scene_tokens=int(scene.shape[0]),
            locations=locations,
        )

    def answer(
        self,
        question: str,
        scene_positions: Any,
        scene_features: Any,
        *,
        location: Any = None,
        history: Sequence[tuple[str, str]] = (),
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        cancel: CancelSource | None = None,
        ignore_eos: bool = False,
        frame: SceneFrame | None = None,
    ) -> LmmAnswer:
        """Answer ``question`` about the scene tokens (see module and class docs).

        ``frame`` (:mod:`.scene_frame`): positions and locations are map coordinates,
        moved into the scene frame the model was trained in; the answer's ``boxes`` are
        moved back to the map (its text keeps the model's scene-frame numbers, so that
        it stays exactly the streamed text).

        ``temperature`` 0 = greedy (deterministic); > 0 samples, reproducibly when ``seed``
        is given. ``stop``: strings that end the answer (not included in it). ``on_text``
        gets each new piece of text. ``cancel`` (Event or callable) is polled before the
        prefill and before every token: set after k tokens, the answer has exactly k tokens
        and ``cancelled=True``.
        ``ignore_eos`` keeps generating past EOS (benchmarks)."""
        answer = self._answer(
            lambda: self.prepare(
                question,
                scene_positions,
                scene_features,
                location=location,
                history=history,
                frame=frame,
            ),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            on_text=on_text,
            cancel=cancel,
            ignore_eos=ignore_eos,
        )
        if frame is not None:
            answer.boxes = [frame.box_to_map(b) for b in answer.boxes]
        return answer

    def describe(
        self,
        point: Sequence[float],
        scene_positions: Any,
        scene_features: Any,
        *,
        question: str = DEFAULT_DESCRIBE_QUESTION,
        **kwargs: Any,
    ) -> LmmAnswer:
        """Caption what is at ``point`` (the click prompt): ``question`` holds one <boxes>."""
        return self.answer(question, scene_positions, scene_features, location=point, **kwargs)


class Llava2DChat(LlavaChat):
    """Ask a LLaVA-1.5-family model (LLaVA-1.5, Spatial-LLaVA...) about one image, given
    as its vision tower's patch features (:mod:`.view` turns a camera frame into them).
    Default template llava_v1, LLaVA-1.5's conversation mode. Thread-safe::

    chat = Llava2DChat.load("/models/spatial-llava-7b")
    chat.answer("Is the cup left of the laptop?", patch_features, on_text=print).text
    """

    model: Llava2DModel

    def __init__(
        self,
        model: Llava2DModel,
        tokenizer: Any,
        template: ConversationTemplate = LLAVA_V1,
        kv_cache: str = "static",
        name: str = "",
    ) -> None:
        super().__init__(model, tokenizer, template, kv_cache, name)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        kv_cache: str = "static",
        template: str = "llava_v1",
        **load_kwargs: Any,
    ) -> Llava2DChat:
        """``load_llava2d(path, device, dtype, **load_kwargs)`` in a chat."""
        from .checkpoint import load_llava2d

        conversation = template_named(template)
        model, tokenizer = load_llava2d(path, device, dtype, **load_kwargs)
        return cls(model, tokenizer, template=conversation, kv_cache=kv_cache, name=str(path))

    @torch.inference_mode()
    def prepare(
        self, question: str, image_features: Any, *, history: Sequence[tuple[str, str]] = ()
    ) -> PreparedInput:
        """``<image>\n`` + question in the template; the image placeholder becomes the
        projected patch features. Bracketed numbers stay text (no 3D clicks in 2D)."""
        prompt = build_prompt(
            question,
            history=history,
            template=self.template,
            use_im_start_end=self.model.config.mm_use_im_start_end,
            clicks=False,
        )
        ids = tokenize_prompt(self.tokenizer, prompt.text)
        image = self.model.embed_image(image_features)
        embeds = self.model.assemble_inputs_embeds(ids, image)
        return PreparedInput(
            prompt=prompt.text,
            input_ids=ids,
            inputs_embeds=embeds,
            scene_tokens=int(image.shape[0]),
            locations=(),
        )

    def answer(
        self,
        question: str,
        image_features: Any,
        *,
        history: Sequence[tuple[str, str]] = (),
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        cancel: CancelSource | None = None,
        ignore_eos: bool = False,
    ) -> LmmAnswer:
        """Answer ``question`` about the image; arguments as :meth:`Llava3DChat.answer`.
        ``scene_tokens`` of the answer counts the image tokens."""
        return self._answer(
            lambda: self.prepare(question, image_features, history=history),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            on_text=on_text,
            cancel=cancel,
            ignore_eos=ignore_eos,
        )
