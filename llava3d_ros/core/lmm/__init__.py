"""LLaVA language-model tiers (ROS-free): scene tokens from the patch memory -> answers
(LLaVA-3D), and one camera image -> answers (the LLaVA-1.5 family: Spatial-LLaVA...).

Public API, 3D::

    model, tokenizer = load_llava3d(path, device=None, dtype=None)   # official layout
    chat = Llava3DChat(model, tokenizer)          # vicuna_v1 template (LLaVA-3D's training)
    pos, feat = memory.pool(kind="vision", voxel_size=0.2, max_tokens=2560)
    ans = chat.answer("What is on the table?", pos, feat,
                      max_new_tokens=128, temperature=0.0, top_p=None, seed=None,
                      stop=(), on_text=feedback, cancel=goal_cancel_event)
    ans.text, ans.boxes, ans.num_tokens, ans.prefill_s, ans.decode_tokens_per_s, ans.cancelled
    chat.describe([x, y, z], pos, feat)          # click prompt ("<boxes>" slot)
    parse_boxes("[1.0,2.0,0.5,0.4,0.4,0.9]")     # -> [TextBox(center, size, ...)]
    write_official_checkpoint(model, tokenizer, out_dir, shards=2)

2D (the view tier, :mod:`.view`)::

    model, tokenizer = load_llava2d(path)          # LLaVA-1.5 layout, no video tower
    view = ViewAnswerer.load(path, shared_tower=None)   # + its CLIP vision tower
    ans, encode_s = view.answer("Is the cup left of the laptop?", rgb, on_text=feedback)
    load_llava(path)                               # either family (model.family says which)

Inputs are pooled scene tokens (positions (T, 3) in metres, CLIP ViT-L/14-336 layer -2
patch features (T, 1024)); nothing re-encodes images per question. LLaVA-3D was trained
on ScanNet scenes in their axis-aligned frame (z up, metres): the 3D position embedding
sees absolute coordinates, so positions should be in a z-up metric frame of room scale.

Config keys read from config.json: model_type ("llava_llama"), architectures,
mm_vision_tower, mm_video_tower ("SpatialAwareModule"), mm_projector_type,
mm_hidden_size, mm_vision_select_layer, mm_vision_select_feature, num_frames,
mm_patch_merge_type, mm_use_im_start_end, tokenizer_model_max_length, plus every Llama key
(hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size,
max_position_embeddings, rms_norm_eps, rope_theta/rope_scaling, tie_word_embeddings...).
"""

from .checkpoint import (
    DEFAULT_IGNORED_KEYS,
    CheckpointError,
    MemoryEstimate,
    TensorInfo,
    build_empty_model,
    check_checkpoint_keys,
    detect_family,
    estimate_memory,
    load_llava,
    load_llava2d,
    load_llava3d,
    load_tokenizer,
    materialize_,
    parse_dtype,
    read_checkpoint_index,
    resolve_checkpoint,
    write_official_checkpoint,
)
from .config import (
    DEFAULT_MAX_SCENE_TOKENS,
    DEFAULT_VOXEL_SIZE,
    FAMILY_2D,
    FAMILY_3D,
    LLAVA_ARCHITECTURE,
    LLAVA_MODEL_TYPE,
    LlavaConfig,
    LlavaConfigError,
    LmmError,
)
from .generate import (
    CancelSource,
    Llava2DChat,
    Llava3DChat,
    LlavaChat,
    LmmAnswer,
    PreparedInput,
    select_token,
)
from .model import (
    IMAGE_TOKEN_INDEX,
    LOC_TOKEN_INDEX,
    OFFICIAL_PREFIXES,
    OFFICIAL_PREFIXES_2D,
    Llava2DModel,
    Llava3DModel,
    LlavaLanguageModel,
    PositionEmbeddingMLP,
    farthest_point_indices,
    from_official_name,
    to_official_name,
)
from .prompt import (
    BOX_PLACEHOLDER,
    DEFAULT_DESCRIBE_QUESTION,
    DEFAULT_TEMPLATE,
    IMAGE_PLACEHOLDER,
    LLAVA_V1,
    SYSTEM_PROMPT_V1,
    SYSTEM_PROMPT_VICUNA_V1,
    TEMPLATES,
    VICUNA_V1,
    ConversationTemplate,
    Prompt,
    TextBox,
    build_prompt,
    extract_locations,
    parse_boxes,
    template_named,
    tokenize_prompt,
)
from .view import ViewAnswerer, background_colour, expand_to_square

__all__ = [
    "BOX_PLACEHOLDER",
    "DEFAULT_DESCRIBE_QUESTION",
    "DEFAULT_IGNORED_KEYS",
    "DEFAULT_MAX_SCENE_TOKENS",
    "DEFAULT_TEMPLATE",
    "DEFAULT_VOXEL_SIZE",
    "FAMILY_2D",
    "FAMILY_3D",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN_INDEX",
    "LLAVA_ARCHITECTURE",
    "LLAVA_MODEL_TYPE",
    "LLAVA_V1",
    "LOC_TOKEN_INDEX",
    "OFFICIAL_PREFIXES",
    "OFFICIAL_PREFIXES_2D",
    "SYSTEM_PROMPT_V1",
    "SYSTEM_PROMPT_VICUNA_V1",
    "TEMPLATES",
    "VICUNA_V1",
    "CancelSource",
    "CheckpointError",
    "ConversationTemplate",
    "Llava2DChat",
    "Llava2DModel",
    "Llava3DChat",
    "Llava3DModel",
    "LlavaChat",
    "LlavaConfig",
    "LlavaConfigError",
    "LlavaLanguageModel",
    "LmmAnswer",
    "LmmError",
    "MemoryEstimate",
    "PositionEmbeddingMLP",
    "PreparedInput",
    "Prompt",
    "TensorInfo",
    "TextBox",
    "ViewAnswerer",
    "background_colour",
    "build_empty_model",
    "build_prompt",
    "check_checkpoint_keys",
    "detect_family",
    "estimate_memory",
    "expand_to_square",
    "extract_locations",
    "farthest_point_indices",
    "from_official_name",
    "load_llava",
    "load_llava2d",
    "load_llava3d",
    "load_tokenizer",
    "materialize_",
    "parse_boxes",
    "parse_dtype",
    "read_checkpoint_index",
    "resolve_checkpoint",
    "select_token",
    "template_named",
    "to_official_name",
    "tokenize_prompt",
    "write_official_checkpoint",
]
