"""Model loading: the fused tanh-GELU swap computes what transformers' ``gelu_new`` computes, and saves the same."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_gelu_new_runs_as_one_fused_kernel_with_the_same_values(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    from rlhfctl.stages._modeling import load_model

    assert json.loads((tiny_model_dir / "config.json").read_text())["activation_function"] == "gelu_new"
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    fused = load_model("AutoModelForCausalLM", tiny_model_dir).eval()
    kinds = {type(module).__name__ for module in fused.modules()}
    assert "NewGELUActivation" not in kinds and "GELUTanh" in kinds
    assert any(isinstance(module, NewGELUActivation) for module in reference.modules())

    input_ids = torch.randint(3, 100, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(input_ids=input_ids).logits
        got = fused(input_ids=input_ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_the_formula_is_the_tanh_gelu_to_fp64_precision():
    from transformers.activations import NewGELUActivation

    from rlhfctl.stages._modeling import use_fused_activations

    holder = torch.nn.Sequential(NewGELUActivation())
    x = torch.linspace(-8, 8, 10001, dtype=torch.float64)
    expected = holder(x)
    assert use_fused_activations(holder) == 1
    assert torch.allclose(holder(x), expected, atol=1e-12, rtol=0)
    assert use_fused_activations(holder) == 0  # idempotent


def test_saved_weights_and_config_are_unchanged(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from rlhfctl.stages._modeling import load_model

    fused = load_model("AutoModelForCausalLM", tiny_model_dir)
    fused.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu_new"
    saved, original = load_file(tmp_path / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[key], original[key]) for key in saved)
