"""One worker's PPO machinery: rollouts, the clipped policy/value updates, evaluation and export (recipe-private).

:func:`rlhfctl.recipes.ppo.train_loop` (the recipe) builds one :class:`PPOTrainer` per worker and calls
:meth:`PPOTrainer.iteration` once per step; the math is in :mod:`rlhfctl.objectives.ppo`, generation in
:mod:`rlhfctl.models.generation`, scoring and the no-grad forwards in :mod:`rlhfctl.models.rollout`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from rlhfctl.errors import RuntimeFailure
from rlhfctl.runfiles import VALUE_MODEL_DIR
from rlhfctl.training.checkpoint import unwrap_model

SAMPLES_PER_LOG = 4


class PPOModels(NamedTuple):
    """The four models of a PPO run, on the worker's device, plus the shared tokenizer."""

    policy: Any  # trained; AutoModelForCausalLM (LoRA: adapters on a frozen base)
    reference: Any  # frozen copy of the initial policy (LoRA: models.adapters.WithoutAdapters of the policy)
    reward_model: Any  # frozen models.scoring.TokenScoreModel (LoRA: the value model's base, adapters off)
    value_model: Any  # trained TokenScoreModel, initialised from the reward model (or the policy)
    tokenizer: Any
    reward_head_fresh: bool  # True when the reward model's score head was initialised at load time


class PPOTrainer:
    """One worker's PPO machinery, used by :func:`train_loop`: rollouts, clipped updates, evaluation, export.

    ``policy``/``value_model`` are the (possibly DDP-wrapped) trained models; generation and the no-grad rollout
    forwards use the bare modules inside them.
    """

    def __init__(self, *, ctx, models: PPOModels, policy, value_model, optimizers, schedulers, kl_controller,
                 score_settings):
        from rlhfctl.models.generation import SamplingSettings

        self.ctx, self.models = ctx, models
        self.policy, self.value_model = policy, value_model
        self.optimizers, self.schedulers = optimizers, schedulers
        self.kl_controller, self.score_settings = kl_controller, score_settings
        self.training, generation = ctx.config.training, ctx.config.generation
        self.temperature = generation.temperature
        self.max_prompt_tokens = ctx.config.dataset.max_length - generation.max_new_tokens
        self.sampling = SamplingSettings.from_config(generation, models.tokenizer)
        self.vllm = None  # generation.backend = "vllm": the worker's colocated engine, fed the policy's updates
        if generation.backend == "vllm":
            from rlhfctl.models.vllm_engine import colocated_rollouts

            self.vllm = colocated_rollouts(ctx, unwrap_model(policy), optimizers["policy"], models.tokenizer,
                                           self.sampling)
        if models.reward_head_fresh and ctx.is_main:
            import logging

            logging.getLogger("rlhfctl.ppo").warning(
                "the reward model's score head was freshly initialised: PPO is optimising a random reward")

    # ------------------------------------------------------------------------------------------- rollouts

    def render_prompts(self, rows: list[dict]) -> list[str]:
        from rlhfctl.data.prompting import format_prompt

        return [format_prompt(row["prompt"], self.models.tokenizer) for row in rows]

    def _generate(self, prompts: list[str]):
        """Sample responses from the policy. With LoRA (unsharded) the adapters are merged into a copy of the base
        weights for the sampling (``adapters_merged``: the same policy at the base's cost per token) and the base is
        back, bitwise, before anything else runs on it (the reference policy is that base)."""
        import contextlib

        from rlhfctl.models.adapters import adapters_merged
        from rlhfctl.models.generation import generate_for_prompts

        if self.vllm is not None:  # the old log-probs then come from the policy's forward (collect_rollout)
            return self.vllm.generate(prompts, self.max_prompt_tokens)
        policy = unwrap_model(self.policy)
        merged = contextlib.nullcontext() if self.ctx.sharded else adapters_merged(policy)
        with self.ctx.gathered(self.policy), merged:  # FSDP: each worker samples on its own, as long as it needs
            return generate_for_prompts(policy, prompts, self.models.tokenizer, self.max_prompt_tokens,
                                        self.sampling)

    def iteration(self, prompts: list[str], *, step: int, with_samples: bool) -> tuple[dict[str, float], list[dict]]:
        """One PPO iteration on ``prompts``: returns the metrics (averaged over workers) and sample rows."""
        import time

        from rlhfctl.models.rollout import collect_rollout, score_sequences
        from rlhfctl.objectives import ppo as pm

        training = self.training
        started = time.perf_counter()
        generation = self._generate(prompts)
        generated = time.perf_counter()
        raw_scores, scores = score_sequences(self.models.reward_model, generation, self.score_settings)
        scored = time.perf_counter()
        rollout = collect_rollout(
            generation, raw_scores, scores, policy=unwrap_model(self.policy), reference=self.models.reference,
            value_model=unwrap_model(self.value_model), temperature=self.temperature, chunk_size=training.batch_size,
        )
        forwarded = time.perf_counter()

        # rewards -> advantages (no gradients: everything here is a constant of the update)
        mask = rollout.response_mask  # (batch, response_len)
        kl_coef = self.kl_controller.value
        kl = pm.kl_per_token(rollout.old_logprobs, rollout.ref_logprobs, training.kl_estimator) * mask
        rewards = pm.per_token_rewards(rollout.scores, kl, mask, kl_coef)
        if training.whiten_rewards:
            rewards = pm.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = pm.gae_advantages(rewards, rollout.old_values, mask, training.gamma, training.lam)
        advantages = pm.masked_whiten(advantages, mask)
        value_warmup = step <= training.value_warmup_steps
        update_stats = self._update(rollout, advantages, returns, step, train_policy=not value_warmup)
        trained = time.perf_counter()

        k1 = (pm.kl_per_token(rollout.old_logprobs, rollout.ref_logprobs, "k1") * mask).sum(1)  # (batch,)
        k3 = (pm.kl_per_token(rollout.old_logprobs, rollout.ref_logprobs, "k3") * mask).sum(1)
        local = {
            "score_mean": rollout.scores.mean().item(),
            "score_sq_mean": (rollout.scores**2).mean().item(),
            "raw_score_mean": rollout.raw_scores.mean().item(),
            "non_score_reward": (-kl_coef * kl).sum(1).mean().item(),
            "kl_k1": k1.mean().item(),
            "kl_k3": k3.mean().item(),
            "explained_variance": pm.explained_variance(rollout.old_values, returns, mask),
            "response_length_mean": mask.sum(1).mean().item(),
            "eos_rate": rollout.has_stop.float().mean().item(),
            "time_generate_s": generated - started,
            "time_score_s": scored - generated,
            "time_forward_s": forwarded - scored,
            "time_train_s": trained - forwarded,
            **update_stats,
        }
        metrics = self.ctx.all_reduce_mean(local)
        metrics["score_std"] = math.sqrt(max(metrics.pop("score_sq_mean") - metrics["score_mean"] ** 2, 0.0))
        metrics["kl_coef"] = kl_coef
        metrics["learning_rate"] = self.schedulers["policy"].get_last_lr()[0]
        if not value_warmup:  # the policy has not moved yet: its KL says nothing about the coefficient
            self.kl_controller.update(metrics["kl_k1"], len(prompts) * self.ctx.world_size)
        samples = self._sample_rows(prompts, rollout) if with_samples else []
        return metrics, samples

    def _update(self, rollout, advantages, returns, step: int, *, train_policy: bool) -> dict[str, float]:
        """``ppo_epochs`` passes over the rollouts in ``num_mini_batches`` clipped updates; returns mean stats.

        With ``train_policy=False`` (value warm-up) only the value model learns and steps."""
        import torch

        training, ctx = self.training, self.ctx
        num_rollouts = rollout.query_responses.shape[0]
        mini_batch = num_rollouts // training.num_mini_batches
        micro_batch = min(training.batch_size, mini_batch)
        totals: dict[str, float] = {}
        count = 0
        for _ in range(training.ppo_epochs):
            order = torch.randperm(num_rollouts, device=rollout.query_responses.device)
            for mini_start in range(0, num_rollouts, mini_batch):
                mini_indices = order[mini_start : mini_start + mini_batch]
                micro_chunks = [mini_indices[i : i + micro_batch] for i in range(0, mini_batch, micro_batch)]
                nonfinite = False
                for chunk_number, idx in enumerate(micro_chunks):
                    last = chunk_number == len(micro_chunks) - 1  # all-reduce once per mini-batch, on its last
                    with ctx.gradient_sync(self.policy, self.value_model, sync=last):
                        loss, stats = self._micro_batch_backward(rollout, idx, advantages, returns, train_policy,
                                                                 weight=len(idx) / len(mini_indices))
                    nonfinite |= not math.isfinite(loss)
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + value
                    count += 1
                # every worker learns whether any worker saw a NaN/inf before anything is stepped
                if ctx.all_reduce_sum({"nonfinite": float(nonfinite)})["nonfinite"] > 0:
                    raise nonfinite_loss_error(step)
                totals["grad_norm_policy"] = (ctx.step(self.optimizers["policy"], self.schedulers["policy"],
                                                       self.policy) if train_policy else 0.0)
                totals["grad_norm_value"] = ctx.step(self.optimizers["value_model"],
                                                     self.schedulers["value_model"], self.value_model)
        return {key: value if key.startswith("grad_norm") else value / count for key, value in totals.items()}

    def _micro_batch_backward(self, rollout, idx, advantages, returns, train_policy: bool, *,
                              weight: float) -> tuple[float, dict[str, float]]:
        """Backward of the clipped policy + value loss of rollouts ``idx`` (scaled by ``weight``, the micro-batch's
        share of its mini-batch); returns the loss and its statistics (floats).

        The policy and the value model share no parameter, so the loss's gradients are those of its policy part for
        the policy and of its value part for the value model: each part gets its own backward, the policy's first,
        which frees the policy's activations before the value model's forward keeps its own (one model's
        activations alive at a time, not both). Without ``train_policy`` the loss is the value loss alone and the
        policy's forward runs without gradients on the bare module (no DDP reduction is prepared for a backward
        that never comes)."""
        import contextlib

        import torch

        from rlhfctl.models.rollout import policy_logprobs, response_values
        from rlhfctl.objectives import ppo as pm

        training, ctx = self.training, self.ctx
        mask = rollout.response_mask[idx]
        ids, attention = rollout.query_responses[idx], rollout.attention_mask[idx]
        with ctx.autocast(), contextlib.nullcontext() if train_policy else torch.no_grad():
            logprobs, entropy = policy_logprobs(
                self.policy if train_policy else unwrap_model(self.policy), ids, attention, rollout.prompt_len,
                self.temperature, return_entropy=True, entropy_grad=training.entropy_coef > 0)
        policy_loss = pm.clipped_policy_loss(logprobs, rollout.old_logprobs[idx], advantages[idx], mask,
                                             training.cliprange)
        mean_entropy = pm.masked_mean(entropy, mask)
        policy_part = policy_loss.loss - training.entropy_coef * mean_entropy
        if train_policy:
            ctx.backward(policy_part * weight)
        with ctx.autocast():
            values = response_values(self.value_model, ids, attention, rollout.prompt_len)
        value_loss = pm.clipped_value_loss(values, rollout.old_values[idx], returns[idx], mask,
                                           training.cliprange_value)
        value_part = training.vf_coef * value_loss.loss
        ctx.backward(value_part * weight)
        loss = value_part.item() + (policy_part.item() if train_policy else 0.0)
        stats = {"policy_loss": policy_loss.loss, "value_loss": value_loss.loss, "entropy": mean_entropy,
                 "policy_clip_fraction": policy_loss.clip_fraction, "value_clip_fraction": value_loss.clip_fraction,
                 "approx_kl": policy_loss.approx_kl, "ratio_mean": policy_loss.ratio_mean}
        return loss, {key: float(value.item()) for key, value in stats.items()}

    def _sample_rows(self, prompts: list[str], rollout) -> list[dict]:
        tokenizer = self.models.tokenizer
        rows = []
        for row in range(min(SAMPLES_PER_LOG, len(prompts))):
            length = int(rollout.response_mask[row].sum().item())
            response_ids = rollout.query_responses[row, rollout.prompt_len : rollout.prompt_len + length]
            rows.append({"prompt": prompts[row], "response": tokenizer.decode(response_ids, skip_special_tokens=True),
                         "score": float(rollout.raw_scores[row].item())})
        return rows

    # ------------------------------------------------------------------------------------------- evaluation

    def evaluate(self, batches: list[tuple[list[str], int]]) -> dict[str, float]:
        """Responses to this worker's share of the validation prompts: reward score, KL (k1), length, EOS rate.

        ``batches``: ``training.batching.evaluation_batches`` (the same count on every worker; only the first
        ``counted`` prompts of a batch are scored). Scores are the reward model's raw output, so runs with different
        score settings stay comparable.
        """
        import torch

        from rlhfctl.models.rollout import policy_logprobs, reward_scores
        from rlhfctl.objectives import ppo as pm

        sums = {"score": 0.0, "kl_k1": 0.0, "length": 0.0, "eos": 0.0, "count": 0.0}
        policy = unwrap_model(self.policy)
        for prompts, counted in batches:
            generation = self._generate(prompts)
            # FSDP: every worker runs the same number of batches (the gathers are collective). One model's full
            # weights at a time: the three at once held two more full copies than any pass needs.
            args = (generation.query_responses, generation.attention_mask, generation.prompt_len, self.temperature)
            with torch.no_grad():
                with self.ctx.gathered(self.models.reward_model):
                    scores = reward_scores(self.models.reward_model, generation)
                with self.ctx.gathered(policy):
                    logprobs, _ = policy_logprobs(policy, *args)  # dropout is off: train/eval modes agree
                with self.ctx.gathered(self.models.reference):
                    ref_logprobs, _ = policy_logprobs(self.models.reference, *args)
            mask = generation.truncated.response_mask[:counted]  # [counted, response_len]
            kl = pm.kl_per_token(logprobs[:counted], ref_logprobs[:counted], "k1")
            sums["score"] += scores[:counted].sum().item()
            sums["kl_k1"] += (kl * mask).sum().item()
            sums["length"] += mask.sum().item()
            sums["eos"] += generation.truncated.has_stop[:counted].float().sum().item()
            sums["count"] += counted
        totals = self.ctx.all_reduce_sum(sums)
        count = max(totals["count"], 1.0)
        return {"score_mean": totals["score"] / count, "kl_k1": totals["kl_k1"] / count,
                "response_length_mean": totals["length"] / count, "eos_rate": totals["eos"] / count}

    # ------------------------------------------------------------------------------------------- export

    def export(self) -> None:
        """Policy + tokenizer to ``checkpoint_dir``; the value model to ``checkpoint_dir/value_model`` (rank 0)."""
        value_model = self.ctx.export_model(self.value_model)  # every rank: FSDP gathers the weights on rank 0
        exported = self.ctx.export(self.ctx.export_model(self.policy), self.models.tokenizer)
        if exported is not None:
            from rlhfctl.training.export import export_hf

            export_hf(value_model, self.models.tokenizer, Path(exported) / VALUE_MODEL_DIR,
                      merge_adapters=self.ctx.merge_adapters_on_export)


def nonfinite_loss_error(step: int) -> RuntimeFailure:
    """The error for a NaN/inf loss: the update is skipped and the run stops; the last checkpoint is kept."""
    return RuntimeFailure(
        f"ppo training stopped at step {step}: the loss is not finite (NaN or inf) on at least one worker. The "
        "update was not applied and the last checkpoint is the last good state.",
        hint="Lower training.learning_rate, set training.max_grad_norm, or clip scores with training.score_clip, "
             "then continue with --resume.",
    )
