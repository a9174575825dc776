"""PPOTrainer's update micro-step (recipes/ppo_trainer.py): one backward per model, so the policy's activations are
gone before the value model's forward keeps its own, with the gradients of the joint loss."""

from __future__ import annotations

import contextlib
import weakref

import pytest

torch = pytest.importorskip("torch")

from rlhfctl.recipes.ppo_trainer import PPOModels, PPOTrainer  # noqa: E402
from tests.recipes.test_ppo import make_config  # noqa: E402

PROMPT, RESPONSE = 7, 5


class _Ctx:
    """What the micro-step reads of a WorkerContext: one worker, no autocast."""

    def __init__(self, config) -> None:
        self.config = config
        self.is_main = True

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss) -> None:
        loss.backward()


def _trainer(tmp_path, model_dir, **training) -> PPOTrainer:
    from rlhfctl.models.loading import disable_dropout, load_model, load_tokenizer
    from rlhfctl.models.scoring import TokenScoreModel

    config = make_config(tmp_path, model_dir, model_dir, **training)
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    policy = load_model("AutoModelForCausalLM", model_dir)
    value_model = load_model("AutoModelForSequenceClassification", model_dir, num_labels=1)
    for model in (policy, value_model):
        disable_dropout(model)
        model.train()
    value_model = TokenScoreModel(value_model)
    models = PPOModels(policy, None, None, value_model, tokenizer, reward_head_fresh=False)
    return PPOTrainer(ctx=_Ctx(config), models=models, policy=policy, value_model=value_model, optimizers={},
                      schedulers={}, kl_controller=None, score_settings=None)


def _rollout(vocab: int):
    from rlhfctl.models.rollout import Rollout

    generator = torch.Generator().manual_seed(0)
    rows = 4
    ids = torch.randint(3, vocab, (rows, PROMPT + RESPONSE), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, :2] = 0  # left padding
    mask = torch.ones(rows, RESPONSE)
    mask[2, 3:] = 0  # a response that stopped early
    noise = torch.randn(rows, RESPONSE, generator=generator)
    rollout = Rollout(query_responses=ids, attention_mask=attention, prompt_len=PROMPT, response_mask=mask,
                      has_stop=torch.ones(rows, dtype=torch.bool), old_logprobs=-3.0 + 0.1 * noise,
                      ref_logprobs=-3.0 + 0.1 * noise, old_values=0.1 * noise, raw_scores=torch.zeros(rows),
                      scores=torch.zeros(rows))
    return rollout, torch.randn(rows, RESPONSE, generator=generator), torch.randn(rows, RESPONSE, generator=generator)


def _joint_loss(trainer: PPOTrainer, rollout, idx, advantages, returns):
    """The loss the micro-step's two backwards stand for: policy + vf_coef * value - entropy_coef * entropy."""
    from rlhfctl.models.rollout import policy_logprobs, response_values
    from rlhfctl.objectives import ppo as pm

    training = trainer.training
    ids, attention, mask = rollout.query_responses[idx], rollout.attention_mask[idx], rollout.response_mask[idx]
    logprobs, entropy = policy_logprobs(trainer.policy, ids, attention, PROMPT, trainer.temperature,
                                        return_entropy=True, entropy_grad=True)
    values = response_values(trainer.value_model, ids, attention, PROMPT)
    policy = pm.clipped_policy_loss(logprobs, rollout.old_logprobs[idx], advantages[idx], mask, training.cliprange)
    value = pm.clipped_value_loss(values, rollout.old_values[idx], returns[idx], mask, training.cliprange_value)
    return policy.loss + training.vf_coef * value.loss - training.entropy_coef * pm.masked_mean(entropy, mask)


def _gradients(*models) -> dict[str, torch.Tensor]:
    return {f"{number}.{name}": param.grad.clone() for number, model in enumerate(models)
            for name, param in model.named_parameters() if param.grad is not None}


def test_the_micro_step_gives_the_joint_losss_gradients_with_one_backward_per_model(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, entropy_coef=0.01)
    rollout, advantages, returns = _rollout(trainer.policy.config.vocab_size)
    idx = torch.tensor([0, 1, 2])
    loss, stats = trainer._micro_batch_backward(rollout, idx, advantages, returns, True, weight=0.5)
    split = _gradients(trainer.policy, trainer.value_model)
    for model in (trainer.policy, trainer.value_model):
        model.zero_grad(set_to_none=True)
    joint = _joint_loss(trainer, rollout, idx, advantages, returns)
    (joint * 0.5).backward()
    together = _gradients(trainer.policy, trainer.value_model)
    assert split.keys() == together.keys() and any(name.startswith("0.") for name in split)
    assert any(name.startswith("1.") for name in split)
    for name, gradient in together.items():
        assert torch.allclose(split[name], gradient, rtol=1e-5, atol=1e-7), name
    assert loss == pytest.approx(joint.item(), rel=1e-6)
    assert set(stats) >= {"policy_loss", "value_loss", "entropy", "approx_kl"}


def test_the_policys_activations_are_freed_before_the_value_model_runs(tmp_path, tiny_model_dir):
    """The update's peak holds one model's activations, not both: when the value model's forward starts, nothing the
    policy's forward saved for its backward is alive any more."""
    trainer = _trainer(tmp_path, tiny_model_dir)
    rollout, advantages, returns = _rollout(trainer.policy.config.vocab_size)
    saved: list[weakref.ref] = []
    alive_at_value_forward: list[int] = []

    class _Saved:  # a box per saved tensor, so its lifetime is that of the autograd graph holding it
        def __init__(self, tensor) -> None:
            self.tensor = tensor

    def pack(tensor):
        box = _Saved(tensor)
        if not alive_at_value_forward:  # before the value model starts: the policy's saved tensors
            saved.append(weakref.ref(box))
        return box

    def count_policy_saved(module, args):
        alive_at_value_forward.append(sum(ref() is not None for ref in saved))

    hook = trainer.value_model.register_forward_pre_hook(count_policy_saved)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
            trainer._micro_batch_backward(rollout, torch.tensor([0, 1]), advantages, returns, True, weight=1.0)
    finally:
        hook.remove()
    assert len(saved) > 20  # the policy's forward saved its activations (the hooks saw them)
    assert alive_at_value_forward == [0]
    assert all(param.grad is not None for param in trainer.policy.parameters() if param.requires_grad)


def test_during_value_warmup_only_the_value_model_gets_gradients(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir)
    rollout, advantages, returns = _rollout(trainer.policy.config.vocab_size)
    loss, stats = trainer._micro_batch_backward(rollout, torch.tensor([0, 1]), advantages, returns, False,
                                                weight=1.0)
    assert all(param.grad is None for param in trainer.policy.parameters())
    assert any(param.grad is not None for param in trainer.value_model.parameters())
    assert loss == pytest.approx(trainer.training.vf_coef * stats["value_loss"], rel=1e-6)
