"""The final export of a LoRA-adapted model: merged full weights that plain transformers loads, or the adapter
folder that plain peft loads on top of its base, and that rlhfctl's own loading reads back as a model source."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rlhfctl.config.schema import LoraConfig  # noqa: E402
from rlhfctl.models.adapters import add_lora, has_adapters  # noqa: E402
from rlhfctl.training.export import export_hf  # noqa: E402


def _adapted(model_dir, auto: str):
    import transformers

    from rlhfctl.models.loading import load_model

    model = load_model(auto, model_dir, **({"num_labels": 1} if "Sequence" in auto else {}))
    add_lora(model, LoraConfig(r=4), source=str(model_dir), score_head="Sequence" in auto)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(model_dir)


def _outputs(model, tokenizer):
    encoded = tokenizer(["Sure! Happy to help.", "No."], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**encoded).logits


@pytest.mark.parametrize("auto", ["AutoModelForCausalLM", "AutoModelForSequenceClassification"])
def test_merged_export_loads_in_plain_transformers(tmp_path, tiny_model_dir, auto):
    import transformers

    model, tokenizer = _adapted(tiny_model_dir, auto)
    expected = _outputs(model, tokenizer)
    export_hf(model, tokenizer, tmp_path / "out", extra_files={"reward_stats.json": {"mean": 0.0}})
    assert not has_adapters(model)  # merged in place: the export is the last thing a run does
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    reloaded = getattr(transformers, auto).from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(_outputs(reloaded, tokenizer), expected, atol=1e-5)
    assert json.loads((tmp_path / "out" / "reward_stats.json").read_text()) == {"mean": 0.0}


@pytest.mark.parametrize("auto", ["AutoModelForCausalLM", "AutoModelForSequenceClassification"])
def test_adapter_folder_loads_with_peft_on_its_base_and_as_a_model_source(tmp_path, tiny_model_dir, auto):
    import transformers
    from peft import PeftModel

    from rlhfctl.models.loading import load_model, load_tokenizer

    model, tokenizer = _adapted(tiny_model_dir, auto)
    expected = _outputs(model, tokenizer)
    export_hf(model, tokenizer, tmp_path / "adapter", merge_adapters=False)
    folder = tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "config.json").exists()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    # plain peft: the base from its folder, the adapter (and a reward model's trained head) on top
    extra = {"num_labels": 1} if "Sequence" in auto else {}
    base = getattr(transformers, auto).from_pretrained(config["base_model_name_or_path"], **extra)
    with_peft = PeftModel.from_pretrained(base, folder).eval()
    assert torch.allclose(_outputs(with_peft, tokenizer), expected, atol=1e-5)
    # rlhfctl: a later stage may name the folder as its model (base + adapter, merged)
    loaded = load_model(auto, folder, **extra).eval()
    assert torch.allclose(_outputs(loaded, load_tokenizer(folder)), expected, atol=1e-5)
