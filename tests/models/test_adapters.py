"""LoRA adapters and gradient checkpointing (models/adapters.py): one base serving two models, exports that load in
plain transformers / peft, fp32 adapters under bf16, checkpointing that changes no number, errors that name the key."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from rlhfctl.config.schema import LoraConfig  # noqa: E402
from rlhfctl.errors import UserError  # noqa: E402
from rlhfctl.models.adapters import (  # noqa: E402
    WithoutAdapters,
    adapt_for_training,
    adapters_disabled,
    adapters_merged,
    add_lora,
    enable_gradient_checkpointing,
    has_adapters,
)
from rlhfctl.models.scoring import TokenScoreModel, make_scorer  # noqa: E402

PAD = 0


def _llama(auto="AutoModelForCausalLM", **overrides):
    from rlhfctl.example.architectures import ARCHITECTURES, SHAPES

    config = ARCHITECTURES["llama"].config(SHAPES["tiny"], vocab_size=60, bos_token_id=1, eos_token_id=2)
    config.num_labels, config.pad_token_id = 1, PAD
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return getattr(transformers, auto).from_config(config)


def _perturb_adapters(model, seed: int = 1) -> None:
    """Give LoRA's zero-initialised up-projections and the score copy values a trained adapter would have."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)


def _batch():
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, 60, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 2:] = 0
    return input_ids, attention_mask


@dataclasses.dataclass
class _Config:  # what adapt_for_training reads from a stage config
    lora: LoraConfig | None
    training: object


def _config(lora: LoraConfig | None, checkpointing: bool = False) -> _Config:
    return _Config(lora=lora, training=dataclasses.make_dataclass("T", [("gradient_checkpointing", bool)])(
        checkpointing))


# ----------------------------------------------------------------------------------------------- one base, two models


def test_only_adapters_train_and_the_reference_is_the_base_without_a_copy():
    base = _llama().eval()
    policy = _llama().eval()
    add_lora(policy, LoraConfig(r=4), source="llama")
    trainable = {name for name, param in policy.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert not any(name.endswith("lm_head.weight") for name in trainable)  # "all-linear" spares the output head
    _perturb_adapters(policy)
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=attention_mask).logits
        adapted = policy(input_ids=input_ids, attention_mask=attention_mask).logits
        reference = WithoutAdapters(policy)(input_ids=input_ids, attention_mask=attention_mask).logits
    assert not torch.allclose(adapted, expected, atol=1e-3)
    assert torch.allclose(reference, expected, atol=1e-6)
    # the switch leaves the trainable set as it was
    assert {name for name, param in policy.named_parameters() if param.requires_grad} == trainable
    with adapters_disabled(policy):
        pass
    assert {name for name, param in policy.named_parameters() if param.requires_grad} == trainable


def test_the_reward_model_keeps_its_trained_head_while_the_value_head_learns():
    """PPO with LoRA: the value model is the reward model + adapters + peft's trainable copy of the score head;
    with the adapters off the shared model is the reward model exactly (its head included)."""
    reward_only = _llama("AutoModelForSequenceClassification").eval()
    shared = _llama("AutoModelForSequenceClassification").eval()
    add_lora(shared, LoraConfig(r=4), source="rm", score_head=True)
    trainable = {name for name, param in shared.named_parameters() if param.requires_grad}
    assert any(name.startswith("score.modules_to_save") for name in trainable)  # the value head trains in full
    _perturb_adapters(shared)
    input_ids, attention_mask = _batch()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    reward, value = TokenScoreModel(shared, adapters=False), TokenScoreModel(shared)
    last = attention_mask.sum(-1) - 1
    with torch.no_grad():
        expected = TokenScoreModel(reward_only)(input_ids, attention_mask, positions)
        assert torch.allclose(reward(input_ids, attention_mask, positions), expected, atol=1e-6)
        assert torch.allclose(reward.score_at(input_ids, attention_mask, positions, last),
                              expected[torch.arange(3), last], atol=1e-6)
        assert not torch.allclose(value(input_ids, attention_mask, positions), expected, atol=1e-3)


def _adapted_policy(**lora):
    policy = _llama().eval()
    add_lora(policy, LoraConfig(r=4, **lora), source="llama")
    _perturb_adapters(policy)
    return policy


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_adapters_summed_in_place_give_peft_s_values_and_gradients_bit_for_bit(autocast):
    """``add_lora`` gives plain LoRA linear layers a forward that adds the scaled adapter output into the base
    output in place (two output-sized temporaries fewer per layer); logits, every adapter gradient and the input
    gradient are bitwise peft's own forward's, in training mode with LoRA dropout too."""
    from peft.tuners.lora.layer import Linear

    ours = _adapted_policy(dropout=0.1).train()
    peft_s = _adapted_policy(dropout=0.1).train()
    peft_s.load_state_dict(ours.state_dict())
    swapped = [module for module in peft_s.modules() if isinstance(module, Linear) and type(module) is not Linear]
    assert swapped and all(type(module) is not Linear for module in ours.modules() if isinstance(module, Linear))
    for module in swapped:
        module.__class__ = Linear  # peft's own forward
    input_ids, attention_mask = _batch()
    results = []
    for model in (ours, peft_s):
        torch.manual_seed(3)  # the same dropout masks
        embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(inputs_embeds=embeddings, attention_mask=attention_mask).logits
        (logits.float() ** 2).mean().backward()
        grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}
        results.append((logits.detach(), embeddings.grad, grads))
    (logits, input_grad, grads), (expected_logits, expected_input_grad, expected_grads) = results
    assert torch.equal(logits, expected_logits) and torch.equal(input_grad, expected_input_grad)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.equal(grad, expected_grads[name]), name


def _snapshot(model):
    return {name: (param.data_ptr(), param.detach().clone(), param.requires_grad)
            for name, param in model.named_parameters()}


def test_merged_adapters_compute_the_adapted_policy_and_give_the_base_back_bitwise():
    """PPO samples with the adapters merged into a copy of the base (base speed per token); on exit every weight is
    the same tensor with the same bits, adapters on, and the reference (adapters off) is the base as before."""
    policy = _adapted_policy()
    input_ids, attention_mask = _batch()
    before = _snapshot(policy)
    with torch.no_grad():
        adapted = policy(input_ids=input_ids, attention_mask=attention_mask).logits
        reference = WithoutAdapters(policy)(input_ids=input_ids, attention_mask=attention_mask).logits
        with adapters_merged(policy):
            merged = policy(input_ids=input_ids, attention_mask=attention_mask).logits
            assert not any(param.requires_grad for name, param in policy.named_parameters() if "lora_" not in name)
        after = policy(input_ids=input_ids, attention_mask=attention_mask).logits
        reference_after = WithoutAdapters(policy)(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.allclose(merged, adapted, atol=1e-5) and not torch.allclose(merged, reference, atol=1e-3)
    assert torch.equal(after, adapted) and torch.equal(reference_after, reference)
    for name, (pointer, value, requires_grad) in _snapshot(policy).items():
        assert pointer == before[name][0] and torch.equal(value, before[name][1]), name
        assert requires_grad == before[name][2], name


def test_merged_adapters_sample_the_same_tokens_with_the_same_log_probs():
    from rlhfctl.models.generation import SamplingSettings, generate_responses

    policy = _adapted_policy(dropout=0.1)  # dropout is off in sampling (eval mode), so merging changes nothing
    policy.train()
    settings = SamplingSettings(max_new_tokens=12, temperature=0.7, top_k=0, top_p=1.0, do_sample=True,
                                stop_ids=(2,), pad_token_id=PAD)
    input_ids, attention_mask = _batch()
    input_ids, attention_mask = input_ids.flip(1), attention_mask.flip(1)  # left padding, as PPO's prompts
    torch.manual_seed(7)
    adapted = generate_responses(policy, input_ids, attention_mask, settings)
    torch.manual_seed(7)
    with adapters_merged(policy):
        merged = generate_responses(policy, input_ids, attention_mask, settings)
    assert torch.equal(merged.query_responses, adapted.query_responses)
    assert torch.allclose(merged.response_logprobs, adapted.response_logprobs, atol=1e-5)
    assert policy.training  # generation leaves the mode as it was


def test_merged_adapters_are_restored_when_the_block_fails():
    policy = _adapted_policy()
    before = _snapshot(policy)
    with pytest.raises(RuntimeError, match="stop"), adapters_merged(policy):
        raise RuntimeError("stop")
    for name, (pointer, value, requires_grad) in _snapshot(policy).items():
        assert pointer == before[name][0] and torch.equal(value, before[name][1])
        assert requires_grad == before[name][2]
    input_ids, attention_mask = _batch()
    with torch.no_grad(), adapters_disabled(policy):
        disabled = policy(input_ids=input_ids, attention_mask=attention_mask).logits
    assert not torch.allclose(policy(input_ids=input_ids, attention_mask=attention_mask).logits, disabled, atol=1e-3)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
def test_merging_leaves_a_weight_tied_to_another_layer_and_a_model_without_adapters_alone():
    tied = _llama(tie_word_embeddings=True)
    tied.tie_weights()
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    add_lora(tied, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]), source="llama")
    embedding = tied.get_input_embeddings().weight
    with adapters_merged(tied):  # merging into the head would change the embeddings too: adapters stay on
        assert tied.lm_head.base_layer.weight is embedding and not tied.lm_head.disable_adapters
        assert not tied.model.layers[0].self_attn.q_proj.disable_adapters
    plain = _llama()
    with adapters_merged(plain):
        pass
    assert not has_adapters(plain)


def test_the_adapter_free_reference_reads_logits_at_the_response_positions_only():
    """``WithoutAdapters`` passes transformers' ``logits_to_keep`` through: the reference's LM head skips the prompt,
    with the same log-probs as the full-sequence forward."""
    from rlhfctl.models.rollout import accepts_logits_to_keep, policy_logprobs

    policy = _adapted_policy()
    reference = WithoutAdapters(policy)
    assert accepts_logits_to_keep(reference) and reference.get_base_model() is policy
    input_ids, attention_mask = _batch()
    input_ids, attention_mask = input_ids.flip(1), attention_mask.flip(1)
    calls = []
    original = type(policy).forward

    def recording(self, *args, **kwargs):
        calls.append(kwargs.get("logits_to_keep", 0))
        return original(self, *args, **kwargs)

    with torch.no_grad():
        type(policy).forward = recording
        try:
            kept, _ = policy_logprobs(reference, input_ids, attention_mask, 4, 0.7)
        finally:
            type(policy).forward = original
        with adapters_disabled(policy):
            logits = policy(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert calls == [input_ids.shape[1] - 4 + 1]
    every = torch.log_softmax(logits[:, 3:-1] / 0.7, -1).gather(-1, input_ids[:, 4:, None]).squeeze(-1)
    assert torch.allclose(kept, every, atol=1e-5)


def test_adapted_scorer_gives_the_full_forwards_scores_and_gradients():
    """The last-position shortcut reaches into base_model and the final block: it must see peft's layers."""
    model = _llama("AutoModelForSequenceClassification").double().train()
    add_lora(model, LoraConfig(r=4), source="rm", score_head=True)
    _perturb_adapters(model)
    input_ids, attention_mask = _batch()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    last = attention_mask.sum(-1) - 1

    def grads(forward):
        model.zero_grad()
        scores = forward()
        scores.sum().backward()
        return scores.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected, expected_grads = grads(lambda: TokenScoreModel(model)(input_ids, attention_mask, positions)[
        torch.arange(3), last])
    got, got_grads = grads(lambda: make_scorer(model)(input_ids, attention_mask))
    assert torch.allclose(got, expected, atol=1e-6)
    assert got_grads.keys() == expected_grads.keys() and all("lora_" in n or "modules_to_save" in n for n in got_grads)
    for name, grad in expected_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-9), name


# ----------------------------------------------------------------------------------------------- precision, checkpointing


def test_adapters_and_their_optimizer_state_stay_fp32_under_bf16_autocast():
    from rlhfctl.training.optim import build_optimizer

    model = _llama()
    add_lora(model, LoraConfig(r=4), source="llama")
    training = dataclasses.make_dataclass("T", [("weight_decay", float), ("learning_rate", float),
                                                ("optimizer", str)])(0.0, 1e-3, "AdamW")
    optimizer = build_optimizer(model, training)
    input_ids, attention_mask = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.dtype == torch.bfloat16  # the maths ran in bf16
    logits.float().mean().backward()
    optimizer.step()
    adapters = [param for name, param in model.named_parameters() if param.requires_grad]
    assert adapters and all(param.dtype == torch.float32 for param in adapters)
    assert all(tensor.dtype == torch.float32 for state in optimizer.state.values() for key, tensor in state.items()
               if key in ("exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("lora", [None, LoraConfig(r=4)], ids=["full", "lora"])
def test_gradient_checkpointing_changes_no_loss_and_no_gradient(lora):
    def loss_and_grads(checkpointing: bool):
        model = adapt_for_training(_llama().double().train(), _config(lora, checkpointing), source="llama")
        if lora:
            _perturb_adapters(model)
        input_ids, attention_mask = _batch()
        calls = _count_calls(model.model.layers[0].mlp)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, use_cache=False).loss
        loss.backward()
        assert calls == [2 if checkpointing else 1]  # recomputed in the backward pass
        return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(False)
    checkpointed_loss, checkpointed_grads = loss_and_grads(True)
    assert torch.equal(loss, checkpointed_loss)
    assert grads.keys() == checkpointed_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(checkpointed_grads[name], grad, atol=1e-12), name


@pytest.mark.parametrize("packed", [False, True], ids=["two-rows", "packed"])
def test_gradient_checkpointing_with_the_last_position_scorer_and_packing(packed):
    from rlhfctl.models import preference
    from rlhfctl.models.packing import collate_packed_pairs

    pairs = [preference.TokenizedPair([5, 6, 7, 8, 9], [5, 6, 7, 11], 0.0),
             preference.TokenizedPair([20, 21], [20, 21, 22, 23], 0.0)]
    collate = collate_packed_pairs if packed else preference.collate_pairs

    def rewards_and_grads(checkpointing: bool):
        model = _llama("AutoModelForSequenceClassification").double().train()
        adapt_for_training(model, _config(LoraConfig(r=4), checkpointing), source="rm", score_head=True)
        _perturb_adapters(model)
        scorer = make_scorer(model)
        first, last = _count_calls(model.model.layers[0].mlp), _count_calls(model.model.layers[-1].mlp)
        chosen, rejected = preference.score_pairs(scorer, collate(pairs, PAD, "cpu"))
        (chosen - 2 * rejected).sum().backward()
        assert first == [2 if checkpointing else 1] and last == [1]  # the shortcut's final block is not recomputed
        return torch.cat([chosen, rejected]).detach(), {n: p.grad for n, p in model.named_parameters()
                                                        if p.grad is not None}

    rewards, grads = rewards_and_grads(False)
    checkpointed, checkpointed_grads = rewards_and_grads(True)
    assert torch.allclose(rewards, checkpointed, atol=1e-12)
    for name, grad in grads.items():
        assert torch.allclose(checkpointed_grads[name], grad, atol=1e-12), name


def _count_calls(module) -> list[int]:
    """Calls of ``module`` (a pre-hook: the recompute stops early, inside the last module it needs)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_pre_hook(hook)
    return calls


# ----------------------------------------------------------------------------------------------- bad input


def test_a_target_module_that_matches_nothing_names_the_key_and_the_model():
    with pytest.raises(UserError, match=r"lora.target_modules: .*LlamaForCausalLM \(my-model\)"):
        add_lora(_llama(), LoraConfig(target_modules=["c_attn"]), source="my-model")


def test_a_layer_peft_cannot_adapt_is_refused():
    with pytest.raises(UserError, match="lora.target_modules: peft cannot add LoRA adapters .*not supported"):
        add_lora(_llama(), LoraConfig(target_modules=["input_layernorm"]), source="my-model")


def test_gradient_checkpointing_on_a_model_without_support_is_refused(monkeypatch):
    model = _llama()
    monkeypatch.setattr(type(model), "supports_gradient_checkpointing", False)
    with pytest.raises(UserError, match=r"training.gradient_checkpointing: LlamaForCausalLM \(m\) does not support"):
        enable_gradient_checkpointing(model, "m")


def test_nothing_changes_without_lora_or_checkpointing():
    model = _llama()
    assert adapt_for_training(model, _config(None), source="llama") is model
    assert not has_adapters(model) and all(param.requires_grad for param in model.parameters())


def test_a_lora_policy_and_its_adapter_free_reference_pack_grpo_groups():
    """GRPO's groups packed behind their prompt (``group_size``) with LoRA: the adapted policy's log-probs and
    adapter gradients, and the adapter-free reference's log-probs, are those of one row per completion."""
    from rlhfctl.models.rollout import packs_groups, policy_logprobs
    from tests.models.test_rollout import _groups_batch

    policy = _adapted_policy().double().train()
    reference = WithoutAdapters(policy)
    assert packs_groups(policy) and packs_groups(reference)
    generation = _groups_batch()
    args = (generation.query_responses, generation.attention_mask, 6, 0.7)
    mask = generation.truncated.response_mask
    results = {}
    for group_size in (1, 3):
        policy.zero_grad()
        logprobs, _ = policy_logprobs(policy, *args, group_size=group_size)
        (logprobs * mask * torch.arange(1.0, mask.numel() + 1).view_as(mask)).sum().backward()
        with torch.no_grad():
            reference_logprobs, _ = policy_logprobs(reference, *args, group_size=group_size)
        grads = {name: param.grad.clone() for name, param in policy.named_parameters() if param.grad is not None}
        results[group_size] = (logprobs.detach() * mask, reference_logprobs * mask, grads)
    rows, packed = results[1], results[3]
    assert torch.allclose(packed[0], rows[0], atol=1e-6, rtol=0)
    assert torch.allclose(packed[1], rows[1], atol=1e-6, rtol=0) and not torch.allclose(packed[1], packed[0])
    assert packed[2].keys() == rows[2].keys() and all("lora" in name for name in rows[2])
    for name, grad in rows[2].items():
        assert torch.allclose(packed[2][name], grad, rtol=0, atol=1e-6 * float(grad.abs().max())), name
