"""Model loading: the fused tanh-GELU swap computes what transformers' ``gelu_new`` computes, and saves the same;
dropout turned off everywhere."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def test_gelu_new_runs_as_one_fused_kernel_with_the_same_values(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    from rlhfctl.models.loading import load_model

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

    from rlhfctl.models.loading import use_fused_activations

    holder = torch.nn.Sequential(NewGELUActivation())
    x = torch.linspace(-8, 8, 10001, dtype=torch.float64)
    expected = holder(x)
    assert use_fused_activations(holder) == 1
    assert torch.allclose(holder(x), expected, atol=1e-12, rtol=0)
    assert use_fused_activations(holder) == 0  # idempotent


def test_saved_weights_and_config_are_unchanged(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from rlhfctl.models.loading import load_model

    fused = load_model("AutoModelForCausalLM", tiny_model_dir)
    fused.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu_new"
    saved, original = load_file(tmp_path / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[key], original[key]) for key in saved)


def test_disable_dropout():
    from rlhfctl.models.loading import disable_dropout

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.dropout = torch.nn.Dropout(0.3)

    model = Tiny()
    disable_dropout(model)
    assert model.dropout.p == 0.0


def test_disable_dropout_also_zeroes_attention_rates_and_the_config():
    """What an attention layer reads at run time (Llama's ``attention_dropout`` float) and the exported config."""
    import transformers

    from rlhfctl.models.loading import disable_dropout

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=50, attention_dropout=0.2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert model.model.layers[0].self_attn.attention_dropout == 0.2
    disable_dropout(model)
    assert model.model.layers[0].self_attn.attention_dropout == 0.0
    assert model.config.attention_dropout == 0.0


def test_model_class_is_what_from_pretrained_builds(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhfctl.models.loading import model_class

    assert model_class("AutoModelForCausalLM", tiny_model_dir) is type(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert model_class("AutoModelForSequenceClassification", tiny_model_dir) is type(
        AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1))
    assert model_class("AutoModelForCausalLM", tmp_path / "missing") is None  # from_pretrained reports it
    assert model_class("AutoModelForCausalLM", "some-org/some-hub-id") is None  # no second hub look-up
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "auto_map": {}}) + "{")
    assert model_class("AutoModelForCausalLM", tmp_path) is None  # unreadable config: from_pretrained reports it


def test_load_model_freezes_the_imports_before_building_the_weights(tiny_model_dir, monkeypatch):
    """In a paused start-up the first load freezes what exists (the imports, the model's code) without a collector
    pass, before from_pretrained builds anything: the models' objects stay the collector's (start_the_loop collects
    their garbage, then freezes them); a second load freezes nothing."""
    import gc
    import sys

    import transformers

    from rlhfctl.models import loading
    from rlhfctl.training import collector

    events: list[str] = []
    imports_done, from_pretrained = collector.imports_done, transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(collector, "imports_done", lambda: (events.append(
        "imports_done, code imported" if "transformers.models.gpt2.modeling_gpt2" in sys.modules else "too early"),
        imports_done()))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *args, **kwargs: (events.append("from_pretrained"), from_pretrained(*args, **kwargs))[1])
    enabled = gc.isenabled()
    try:
        with collector.start_up_without_collection():
            first = loading.load_model("AutoModelForCausalLM", tiny_model_dir)
            frozen = gc.get_freeze_count()
            second = loading.load_model("AutoModelForCausalLM", tiny_model_dir)
            assert events == ["imports_done, code imported", "from_pretrained"] * 2
            assert frozen > 0 and gc.get_freeze_count() == frozen  # the second load froze nothing
            tracked = {id(obj) for obj in gc.get_objects()}  # frozen objects are not listed
            assert id(first) in tracked and id(second) in tracked
            assert all(id(parameter) in tracked for parameter in first.parameters())
            collector.start_the_loop()
            assert gc.get_freeze_count() > frozen and id(first) not in {id(obj) for obj in gc.get_objects()}
    finally:
        gc.unfreeze()
        gc.enable() if enabled else gc.disable()
