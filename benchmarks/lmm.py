"""LLaVA-3D language-model tier timing: prefill of 2560 scene tokens + a short prompt, and
decode tokens/s, through the same ``Llava3DChat.answer`` path the ROS ask action uses.

- CUDA (when present): the 7B shape of LLaVA-3D (Vicuna-7B: hidden 4096, 32 layers, 32
  heads, FFN 11008, vocab 32000), bf16, random weights.
- CPU: a small shape (hidden 512, 4 layers, fp32) - the 7B shape is infeasible on a few
  cores.

Random weights: timings only (greedy decoding with EOS ignored so every run decodes the
same number of tokens). Prints medians of a few runs; the last line is the ratio.

    .venv/bin/python benchmarks/lmm.py [--runs 3] [--decode-tokens 32] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava3d_ros.core.lmm import Llava3DChat, build_empty_model
from tests.lmm_fixtures import make_word_tokenizer, tiny_config

SCENE_TOKENS = 2560  # LLaVA-3D's cap
CLIP_WIDTH = 1024  # CLIP ViT-L/14-336 patch features
VOCAB = 32000
QUESTION = "What is on the table and what color is the chair near the left cup ?"


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int


SMALL = Shape("small", 512, 4, 8, 1376)
LLAVA_7B = Shape("7B", 4096, 32, 32, 11008)


@torch.no_grad()
def _random_init_(model: torch.nn.Module, std: float = 0.02) -> None:
    """On-device random weights (fast even at 7B); norm gains 1."""
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith(
            "RMSNorm"
        )
        for name, p in module.named_parameters(recurse=False):
            if is_norm and name == "weight":
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)


def bench(
    shape: Shape,
    device: torch.device,
    dtype: torch.dtype,
    runs: int,
    decode_tokens: int,
    scene_tokens: int = SCENE_TOKENS,
) -> dict[str, float]:
    tokenizer = make_word_tokenizer(vocab_size=VOCAB)
    config = tiny_config(
        VOCAB,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_heads=shape.heads,
        intermediate_size=shape.ffn,
        mm_hidden_size=CLIP_WIDTH,
        max_position_embeddings=4096,
    )
    model = build_empty_model(config, device, dtype)
    _random_init_(model)
    model.eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    chat = Llava3DChat(model, tokenizer)
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(scene_tokens, 3, generator=g) * torch.tensor([8.0, 6.0, 3.0])
    feat = torch.randn(scene_tokens, CLIP_WIDTH, generator=g)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefill, decode = [], []
    prompt_tokens = 0
    for i in range(runs + 1):  # first run warms up kernels and allocator
        ans = chat.answer(QUESTION, pos, feat, max_new_tokens=decode_tokens, ignore_eos=True)
        assert ans.num_tokens == decode_tokens and ans.scene_tokens == scene_tokens
        prompt_tokens = ans.prompt_tokens
        if i:
            prefill.append(ans.prefill_s)
            decode.append(ans.decode_tokens_per_s)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    out = {
        "params": params,
        "prompt_tokens": prompt_tokens,
        "prefill_ms": 1e3 * statistics.median(prefill),
        "decode_tps": statistics.median(decode),
        "peak_gib": peak,
    }
    print(
        f"{device.type} {str(dtype).removeprefix('torch.')} {shape.name} shape: hidden "
        f"{shape.hidden}, {shape.layers} layers, {shape.heads} heads, FFN {shape.ffn}, vocab "
        f"{VOCAB} ({params / 1e6:.0f} M parameters)"
    )
    print(
        f"  input: {scene_tokens} scene tokens + {prompt_tokens - scene_tokens} prompt "
        f"tokens = {prompt_tokens}"
    )
    print(
        f"  prefill: median {out['prefill_ms']:.1f} ms over {runs} runs "
        f"({', '.join(f'{1e3 * s:.1f}' for s in prefill)})"
    )
    print(
        f"  decode:  median {out['decode_tps']:.1f} tokens/s over {runs} runs of "
        f"{decode_tokens} tokens ({', '.join(f'{r:.1f}' for r in decode)})"
    )
    if device.type == "cuda":
        print(f"  peak GPU memory: {peak:.2f} GiB")
    del chat, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def memory_7b(max_new_tokens: int = 512) -> None:
    """Both tiers at the released 7B shape, counted on the meta device (nothing allocated):
    weights + KV cache per the loader's own estimate, plus the CLIP ViT-L/14-336 tower."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llava3d_ros.core.lmm import estimate_memory
    from llava3d_ros.core.lmm.checkpoint import PROMPT_TOKEN_ALLOWANCE, model_for_config
    from tests.lmm_fixtures import tiny_config_2d

    shape = LLAVA_7B
    kw = {
        "hidden_size": shape.hidden,
        "num_layers": shape.layers,
        "num_heads": shape.heads,
        "intermediate_size": shape.ffn,
        "mm_hidden_size": CLIP_WIDTH,
    }
    clip = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    with torch.device("meta"):
        tower = CLIPVisionModel(clip)
        models = {
            "LLaVA-3D (scene)": (
                model_for_config(tiny_config(VOCAB, **kw), SCENE_TOKENS, None),
                2560,
            ),
            "LLaVA-1.5 / Spatial-LLaVA (view)": (
                model_for_config(tiny_config_2d(VOCAB, **kw), SCENE_TOKENS, None),
                576,
            ),
        }
    gib = 2.0**30
    tower_gib = sum(p.numel() for p in tower.parameters()) * 2 / gib
    total = 0.0
    print(f"bf16, max_new_tokens {max_new_tokens}, prompt allowance {PROMPT_TOKEN_ALLOWANCE}")
    for name, (model, visual) in models.items():
        est = estimate_memory(
            model, torch.bfloat16, visual + PROMPT_TOKEN_ALLOWANCE + max_new_tokens
        )
        total += est.total_bytes / gib
        print(f"  {name}: {est}")
    print(f"  CLIP ViT-L/14-336 vision tower: {tower_gib:.2f} GiB (one copy when shared)")
    print(
        f"  both tiers: {total + tower_gib:.2f} GiB with the tower shared, "
        f"{total + 2 * tower_gib:.2f} GiB with two towers (activations not included)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--skip-cpu", action="store_true", help="only the CUDA 7B-shape run")
    ap.add_argument("--memory", action="store_true", help="only print the 7B memory of both tiers")
    args = ap.parse_args()
    if args.memory:
        memory_7b()
        return
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {os.cpu_count()} CPUs"
    )
    ratios: list[str] = []
    if not args.skip_cpu:
        cpu = bench(SMALL, torch.device("cpu"), torch.float32, args.runs, args.decode_tokens)
        ratios.append(
            f"cpu fp32 small shape: prefill {cpu['prefill_ms'] * 1000 / SCENE_TOKENS:.1f}"
            f" ms per 1000 scene tokens, decode {cpu['decode_tps']:.1f} tokens/s"
        )
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name(dev)}")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        gpu = bench(LLAVA_7B, dev, dtype, args.runs, max(args.decode_tokens, 64))
        ratios.append(
            f"cuda {str(dtype).removeprefix('torch.')} 7B shape: prefill "
            f"{gpu['prefill_ms'] * 1000 / SCENE_TOKENS:.1f} ms per 1000 scene tokens, "
            f"decode {gpu['decode_tps']:.1f} tokens/s"
        )
    else:
        print("CUDA: not available, 7B-shape bf16 run skipped")
    print("ratio: " + "; ".join(ratios) if ratios else "ratio: nothing run")


if __name__ == "__main__":
    main()
