"""The node's parameter table, the shipped params file and the pipeline config agree."""

from __future__ import annotations

import pytest
import yaml

from llava3d_ros.ros.params import (
    NODE_PARAMS,
    encoder_config_from_params,
    encoder_option_defaults,
    params_yaml,
    pipeline_config_from_params,
)
from tests.ros_env import REPO_ROOT


def test_shipped_params_file_is_current() -> None:
    shipped = (REPO_ROOT / "config" / "llava3d.yaml").read_text()
    assert shipped == params_yaml(), "regenerate with: llava3d-ros params > config/llava3d.yaml"
    loaded = yaml.safe_load(shipped)["/**"]["ros__parameters"]
    assert loaded["memory"]["voxel_size"] == 0.05
    assert loaded["encoder"]["backend"] == "dinov2_onnx"


def test_every_parameter_is_documented_and_valid() -> None:
    names = [p.name for p in NODE_PARAMS]
    assert len(names) == len(set(names))
    for spec in NODE_PARAMS:
        assert spec.description, spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name
        if spec.min_value is not None:
            assert spec.min_value <= spec.default <= spec.max_value, spec.name


def test_defaults_build_a_pipeline_config() -> None:
    values = {p.name: p.default for p in NODE_PARAMS}
    encoder = encoder_config_from_params("dinov2_onnx", encoder_option_defaults("dinov2_onnx"))
    cfg = pipeline_config_from_params(values, encoder)
    assert cfg.memory.voxel_size == 0.05 and cfg.grounding.min_score == 0.5
    assert cfg.query.describe_vocabulary[0] == "mug"
    # The shipped alignment head is the default when this install has it.
    from llava3d_ros.models import default_head_path

    head = default_head_path()
    assert encoder.get("head_path") == (str(head) if head else None)
    assert "head_path" not in encoder_config_from_params("dinov2_onnx", {"head_path": "none"})
    # The torch DINOv2 backend (same weights) gets the same head by default.
    torch_encoder = encoder_config_from_params(
        "dinov2_torch", encoder_option_defaults("dinov2_torch")
    )
    assert torch_encoder.get("head_path") == encoder.get("head_path")
    assert torch_encoder["device"] == "auto" and torch_encoder["dtype"] == "auto"
    assert "cache_dir" not in encoder  # unset options fall back to the backend default
    bad = dict(values, **{"memory.voxel_sise": 0.1})
    with pytest.raises(ValueError, match="voxel_sise"):
        pipeline_config_from_params(bad, encoder)
    with pytest.raises(ValueError, match=r"unknown encoder\.backend"):
        encoder_option_defaults("nope")
