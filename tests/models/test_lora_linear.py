"""The fused LoRA linear layer (models/lora_linear.py): peft's function and gradients in one autograd node, for
``nn.Linear`` and GPT-2's ``Conv1D`` bases, and peft's own forward wherever the fused one would compute otherwise."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from rlhfctl.config.schema import LoraConfig  # noqa: E402
from rlhfctl.models.adapters import add_lora  # noqa: E402
from rlhfctl.models.lora_linear import fusable, lora_linear  # noqa: E402


def _operands(transposed: bool, bias: bool, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)

    def draw(*shape, grad=False):
        return torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_(grad)

    x = draw(2, 5, 7, grad=True)  # (batch, seq, in)
    weight = draw(7, 4) if transposed else draw(4, 7)  # Conv1D stores (in, out), nn.Linear (out, in)
    return x, weight, draw(4) if bias else None, draw(3, 7, grad=True), draw(4, 3, grad=True)


@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_the_fused_layer_computes_base_plus_scaled_adapter_with_its_exact_gradients(transposed, bias):
    """Values equal ``x W^T + b + s (x A^T) B^T`` written op by op; ``gradcheck`` (float64, finite differences)
    checks the hand-written backward for the input and both adapter matrices."""
    x, weight, bias_, lora_A, lora_B = _operands(transposed, bias)
    base = x @ (weight if transposed else weight.t()) + (0 if bias_ is None else bias_)
    expected = base + ((x @ lora_A.t()) @ lora_B.t()) * 2.5
    fused = lora_linear(x, weight, bias_, lora_A, lora_B, 2.5, transposed=transposed)
    assert fused.shape == (2, 5, 4)
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, a, b: lora_linear(x, weight, bias_, a, b, 2.5, transposed=transposed), (x, lora_A, lora_B))


def test_no_gradient_is_computed_for_an_input_that_needs_none():
    x, weight, bias, lora_A, lora_B = _operands(transposed=True, bias=True)
    x = x.detach()  # the first block's input: embeddings of a frozen base
    lora_linear(x, weight, bias, lora_A, lora_B, 2.0, transposed=True).sum().backward()
    assert x.grad is None and lora_A.grad is not None and lora_B.grad is not None


def _gpt2(**overrides):
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=32, vocab_size=50, **overrides)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _llama():
    from rlhfctl.example.architectures import ARCHITECTURES, SHAPES

    config = ARCHITECTURES["llama"].config(SHAPES["tiny"], vocab_size=50, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def _adapted(build, dropout: float = 0.0):
    model = build()
    for module in model.modules():  # PPO turns the base's dropout off; LoRA dropout stays as configured
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    add_lora(model, LoraConfig(r=4, alpha=8.0, dropout=dropout), source="test")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA's zero-initialised lora_B: give it values a trained adapter would have
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.train()


def _peft_forward(model) -> None:
    """Put peft's own ``lora.Linear.forward`` back on every adapted layer."""
    from peft.tuners.lora.layer import Linear

    for module in model.modules():
        if isinstance(module, Linear):
            module.__class__ = Linear


def _logits_and_grads(model):
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 50, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding, as PPO's rollouts have
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    (logits**2).mean().backward()
    return logits.detach(), {name: param.grad for name, param in model.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2-conv1d", "llama-linear"])
def test_an_adapted_model_gives_peft_s_logits_and_adapter_gradients(build):
    """Every adapted layer of a GPT-2 (``Conv1D``) and a Llama (``nn.Linear``) takes the fused path; logits and
    every adapter's gradient agree with peft's own forward to float32 rounding."""
    from peft.tuners.lora.layer import Linear

    ours, peft_s = _adapted(build), _adapted(build)
    layers = [module for module in ours.modules() if isinstance(module, Linear)]
    x = torch.zeros(1, layers[0].in_features)
    assert layers and all(fusable(layer, x) for layer in layers)
    _peft_forward(peft_s)
    (logits, grads), (expected_logits, expected_grads) = _logits_and_grads(ours), _logits_and_grads(peft_s)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_what_the_fused_layer_would_compute_differently_takes_peft_s_forward():
    """LoRA dropout, autocast, a base that trains, a dtype mismatch and adapters switched off are not fused."""
    from peft.tuners.lora.layer import Linear

    def first_layer(model):
        return next(module for module in model.modules() if isinstance(module, Linear))

    plain = first_layer(_adapted(_gpt2))
    x = torch.zeros(1, plain.in_features)
    assert fusable(plain, x)
    assert not fusable(first_layer(_adapted(_gpt2, dropout=0.1)), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fusable(plain, x)
    assert not fusable(plain, x.double())
    plain.get_base_layer().weight.requires_grad_(True)
    assert not fusable(plain, x)
    plain.get_base_layer().weight.requires_grad_(False)
    plain.set_adapter([])  # no active adapter
    assert not fusable(plain, x)
