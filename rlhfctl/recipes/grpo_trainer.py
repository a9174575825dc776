"""One worker's GRPO machinery: group rollouts, rewards, clipped updates, evaluation and export (recipe-private).

:func:`rlhfctl.recipes.grpo.train_loop` builds one :class:`GRPOTrainer` per worker and calls
:meth:`GRPOTrainer.iteration` once per step. Generation is :mod:`rlhfctl.models.generation`'s, log-probs and
reward-model scores :mod:`rlhfctl.models.rollout`'s, the maths :mod:`rlhfctl.objectives.grpo`'s, the verifiable
rewards :mod:`rlhfctl.recipes.grpo_rewards`'.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

from rlhfctl.errors import RuntimeFailure
from rlhfctl.recipes.grpo_rewards import REWARD_MODEL, Completions
from rlhfctl.training.checkpoint import unwrap_model

SAMPLES_PER_LOG = 4


class GRPOModels(NamedTuple):
    """The models of a GRPO run on the worker's device, and the shared tokenizer."""

    policy: Any  # trained; AutoModelForCausalLM
    reference: Any  # frozen copy of the initial policy (LoRA: models.adapters.WithoutAdapters of the policy), or
    #                 None when training.beta == 0
    reward_model: Any  # frozen models.scoring.TokenScoreModel, or None (reward functions only)
    tokenizer: Any


class Scored(NamedTuple):
    """A generated batch with its rewards."""

    generation: Any  # models.generation.Generation
    components: dict[str, Any]  # component name -> (batch,) float tensor of unweighted scores
    rewards: Any  # (batch,) the weighted sum
    responses: list[str]  # decoded texts; empty unless reward functions or samples read them
    generate_seconds: float  # of the time taken, generating (the rest: decoding and scoring)


class GRPOTrainer:
    """One worker's GRPO machinery, used by :func:`rlhfctl.recipes.grpo.train_loop`.

    ``policy`` is the (possibly DDP-wrapped) trained model; generation and the no-grad forwards use the bare
    module inside it.
    """

    def __init__(self, *, ctx, models: GRPOModels, policy, optimizer, scheduler, reward_functions):
        from rlhfctl.models.generation import SamplingSettings

        self.ctx, self.models, self.policy = ctx, models, policy
        self.optimizer, self.scheduler = optimizer, scheduler
        self.reward_functions = reward_functions
        self.training, generation = ctx.config.training, ctx.config.generation
        self.reward_model_weight = ctx.config.reward.model_weight
        self.temperature = generation.temperature
        self.max_prompt_tokens = ctx.config.dataset.max_length - generation.max_new_tokens
        self.sampling = SamplingSettings.from_config(generation, models.tokenizer)
        self.vllm = None  # generation.backend = "vllm": the worker's colocated engine, fed the policy's updates
        if generation.backend == "vllm":
            from rlhfctl.models.vllm_engine import colocated_rollouts

            self.vllm = colocated_rollouts(ctx, unwrap_model(policy), optimizer, models.tokenizer, self.sampling)

    # ------------------------------------------------------------------------------------------- rollouts

    def render_prompts(self, rows: list[dict]) -> list[str]:
        from rlhfctl.data.prompting import format_prompt

        return [format_prompt(row["prompt"], self.models.tokenizer) for row in rows]

    def _generate(self, prompts: list[str], repeats: int):
        from rlhfctl.models.generation import generate_for_prompts

        if self.vllm is not None:  # no sampled log-probs: _sampling_logprobs runs the policy's forward
            return self.vllm.generate(prompts[::repeats], self.max_prompt_tokens, repeats=repeats)
        with self.ctx.gathered(self.policy):  # FSDP: each worker samples on its own, as long as it needs
            return generate_for_prompts(unwrap_model(self.policy), prompts[::repeats], self.models.tokenizer,
                                        self.max_prompt_tokens, self.sampling, repeats=repeats)

    def _score(self, rows: list[dict], prompts: list[str], *, repeats: int = 1, with_text: bool = False) -> Scored:
        """Generate one completion per prompt and reward it: every component, then the weighted sum. ``prompts``
        holds each prompt ``repeats`` times in a row (a group), tokenised once. The responses are decoded to text
        only when a reward function reads them or ``with_text`` (samples) asks."""
        import torch

        from rlhfctl.models.rollout import reward_scores

        started = time.perf_counter()
        generation = self._generate(prompts, repeats)
        generate_seconds = time.perf_counter() - started
        truncated = generation.truncated
        tokenizer = self.models.tokenizer
        responses = []
        if self.reward_functions or with_text:
            responses = [tokenizer.decode(truncated.response_ids[row, : int(truncated.lengths[row])],
                                          skip_special_tokens=True) for row in range(len(prompts))]
        components: dict[str, Any] = {}
        total = torch.zeros(len(prompts), device=self.ctx.device)
        if self.models.reward_model is not None:
            components[REWARD_MODEL] = reward_scores(self.models.reward_model, generation,
                                                     group_size=repeats).float()
            total = total + self.reward_model_weight * components[REWARD_MODEL]
        if self.reward_functions:
            batch = Completions(rows=rows, prompts=prompts, responses=responses,
                                response_tokens=(truncated.lengths - truncated.has_stop.long()).tolist())
            for function in self.reward_functions:
                components[function.name] = torch.tensor(function.score(batch), dtype=torch.float32,
                                                         device=self.ctx.device)
                total = total + function.weight * components[function.name]
        return Scored(generation, components, total, responses, generate_seconds)

    def _no_grad_logprobs(self, model, generation):
        """Log-probs ``(batch, response_len)`` of the completions under ``model``, in chunks of ``batch_size``."""
        import torch

        from rlhfctl.models.rollout import policy_logprobs

        chunks = []
        module = model if isinstance(model, torch.nn.Module) else model.model  # WithoutAdapters: the adapted policy
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for start in range(0, generation.query_responses.shape[0], self.training.batch_size):
                    rows = slice(start, start + self.training.batch_size)
                    ids = generation.query_responses[rows]
                    chunks.append(policy_logprobs(model, ids, generation.attention_mask[rows], generation.prompt_len,
                                                  self.temperature,
                                                  group_size=self._whole_groups(start, ids.shape[0]))[0])
        finally:
            module.train(was_training)
        return torch.cat(chunks) * generation.truncated.response_mask

    def _sampling_logprobs(self, generation):
        """The log-probs ``(batch, response_len)`` of the policy that sampled ``generation``, or None where the
        update needs none: one pass over one mini-batch (the sampling policy is the one being trained, ratio = 1,
        the first pass's own log-probs serve). Otherwise the decoder's, taken from the logits each token was drawn
        from (as PPO's rollout), and a no-grad forward only for a generation without them."""
        training = self.training
        if training.ppo_epochs == 1 and training.num_mini_batches == 1:
            return None
        if generation.response_logprobs is not None and generation.logprobs_temperature == self.temperature:
            return generation.response_logprobs
        return self._no_grad_logprobs(unwrap_model(self.policy), generation)

    def iteration(self, rows: list[dict], prompts: list[str], *, step: int,
                  with_samples: bool) -> tuple[dict[str, float], list[dict]]:
        """One GRPO iteration on ``prompts`` (with their ``rows``): ``num_generations`` completions each ->
        rewards -> group advantages -> ``ppo_epochs`` x ``num_mini_batches`` clipped updates. Returns the metrics
        (averaged over workers) and sample rows."""
        from rlhfctl.objectives.grpo import group_advantages

        training = self.training
        group = training.num_generations
        group_rows = [row for row in rows for _ in range(group)]  # completions of a prompt are consecutive
        group_prompts = [prompt for prompt in prompts for _ in range(group)]
        started = time.perf_counter()
        scored = self._score(group_rows, group_prompts, repeats=group, with_text=with_samples)
        generated = time.perf_counter()
        advantages = group_advantages(scored.rewards, group, scale_rewards=training.scale_rewards,
                                      leave_one_out=training.rloo)
        generation = scored.generation
        old_logprobs = self._sampling_logprobs(generation)
        ref_logprobs = (self._no_grad_logprobs(self.models.reference, generation)
                        if self.models.reference is not None else None)
        forwarded = time.perf_counter()
        update_stats, sampled_logprobs = self._update(generation, advantages.advantages, old_logprobs, ref_logprobs,
                                                      step)
        trained = time.perf_counter()

        mask = generation.truncated.response_mask
        rewards = scored.rewards
        local = {
            "reward_mean": rewards.mean().item(),
            "reward_sq_mean": (rewards**2).mean().item(),
            "reward_group_std": advantages.group_std.mean().item(),
            "zero_std_groups": (advantages.group_std == 0).float().mean().item(),
            **{f"rewards/{name}": values.mean().item() for name, values in scored.components.items()},
            "response_length_mean": mask.sum(1).mean().item(),
            "eos_rate": generation.truncated.has_stop.float().mean().item(),
            "time_generate_s": scored.generate_seconds,
            "time_score_s": generated - started - scored.generate_seconds,
            "time_forward_s": forwarded - generated,
            "time_train_s": trained - forwarded,
            **update_stats,
        }
        if ref_logprobs is not None:  # nats per completion, what the [monitor] KL ceiling reads (as PPO's kl_k1)
            from rlhfctl.objectives.ppo import kl_per_token

            local["kl_k1"] = (kl_per_token(sampled_logprobs, ref_logprobs, "k1") * mask).sum(1).mean().item()
        metrics = self.ctx.all_reduce_mean(local)
        metrics["reward_std"] = math.sqrt(max(metrics.pop("reward_sq_mean") - metrics["reward_mean"] ** 2, 0.0))
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        samples = self._sample_rows(group_prompts, scored) if with_samples else []
        return metrics, samples

    def _update(self, generation, advantages, old_logprobs, ref_logprobs, step: int):
        """``ppo_epochs`` passes over the completions in ``num_mini_batches`` mini-batches of whole groups, each
        one optimizer step over micro-batches of ``batch_size``. Returns the mean statistics and the sampling
        policy's log-probs ``(batch, response_len)``: ``old_logprobs``, or (one pass over one mini-batch, where
        no separate forward computed them) the first pass's own, detached."""
        import torch

        from rlhfctl.models.rollout import policy_logprobs
        from rlhfctl.objectives import ppo as ppo_objective
        from rlhfctl.objectives.grpo import grpo_loss

        training, ctx = self.training, self.ctx
        group = training.num_generations
        mask = generation.truncated.response_mask
        groups = generation.query_responses.shape[0] // group
        groups_per_mini = groups // training.num_mini_batches
        totals: dict[str, float] = {}  # token-weighted sums of the per-micro-batch statistics
        tokens, losses = 0.0, []
        sampled = old_logprobs if old_logprobs is not None else torch.zeros_like(mask)
        for _ in range(training.ppo_epochs):
            group_order = torch.randperm(groups, device=mask.device)
            for mini_start in range(0, groups, groups_per_mini):
                chosen_groups = group_order[mini_start : mini_start + groups_per_mini]
                mini = (chosen_groups[:, None] * group + torch.arange(group, device=mask.device)).reshape(-1)
                normalizer = self._normalizer(mask[mini])
                micro_chunks = [mini[i : i + training.batch_size] for i in range(0, len(mini), training.batch_size)]
                nonfinite, mini_loss = False, 0.0
                for number, idx in enumerate(micro_chunks):
                    with ctx.gradient_sync(self.policy, sync=number == len(micro_chunks) - 1):
                        with ctx.autocast():
                            logprobs, entropy = policy_logprobs(
                                self.policy, generation.query_responses[idx], generation.attention_mask[idx],
                                generation.prompt_len, self.temperature, return_entropy=True,
                                group_size=self._whole_groups(number * training.batch_size, len(idx)))
                        result = grpo_loss(
                            logprobs, logprobs.detach() if old_logprobs is None else old_logprobs[idx],
                            advantages[idx], mask[idx], epsilon=training.epsilon, beta=training.beta,
                            ref_logprobs=None if ref_logprobs is None else ref_logprobs[idx],
                            aggregation=training.loss_aggregation, normalizer=normalizer)
                        ctx.backward(result.loss)
                    if old_logprobs is None:  # on-policy: nothing was stepped yet, these are the sampler's
                        sampled[idx] = logprobs.detach().float() * mask[idx]
                    nonfinite |= not bool(torch.isfinite(result.loss).item())
                    mini_loss += float(result.loss.item())  # the chunks' losses add up to the mini-batch's
                    chunk_tokens = float(mask[idx].sum().item())
                    for key, value in (("clip_fraction", result.clip_fraction), ("kl_k3_per_token", result.kl),
                                       ("ratio_mean", result.ratio_mean),
                                       ("entropy", ppo_objective.masked_mean(entropy, mask[idx]))):
                        totals[key] = totals.get(key, 0.0) + float(value.item()) * chunk_tokens
                    tokens += chunk_tokens
                # every worker learns whether any worker saw a NaN/inf before anything is stepped
                if ctx.all_reduce_sum({"nonfinite": float(nonfinite)})["nonfinite"] > 0:
                    raise _nonfinite_loss_error(step)
                losses.append(mini_loss)
                grad_norm = ctx.step(self.optimizer, self.scheduler, self.policy)
        stats = {key: value / max(tokens, 1.0) for key, value in totals.items()}
        return {"loss": sum(losses) / len(losses), "grad_norm": grad_norm, **stats}, sampled

    def _whole_groups(self, start: int, rows: int) -> int:
        """``num_generations`` when the rows ``start .. start + rows`` of a batch of consecutive groups (a rollout,
        or a mini-batch of whole groups) are whole groups, whose prompt the forwards then compute once per group
        (:func:`rlhfctl.models.rollout.policy_logprobs`); else 1."""
        group = self.training.num_generations
        return group if start % group == 0 and rows % group == 0 else 1

    def _normalizer(self, mini_mask) -> float:
        """What a mini-batch's summed loss is divided by so that, after DDP averages the workers' gradients, the
        loss is the mean over the whole step's tokens (``"token"``) or completions (``"sequence"``)."""
        if self.training.loss_aggregation == "sequence":
            return float(mini_mask.shape[0])  # every worker has the same number of completions
        local = float(mini_mask.sum().item())
        if self.ctx.world_size == 1:
            return max(local, 1.0)
        total = self.ctx.all_reduce_sum({"tokens": local})["tokens"]
        return max(total / self.ctx.world_size, 1.0)

    def _sample_rows(self, prompts: list[str], scored: Scored) -> list[dict]:
        rows = []
        for row in range(min(SAMPLES_PER_LOG, len(prompts))):
            sample = {"prompt": prompts[row], "response": scored.responses[row],
                      "reward": float(scored.rewards[row].item())}
            sample.update({name: float(values[row].item()) for name, values in scored.components.items()})
            rows.append(sample)
        return rows

    # ------------------------------------------------------------------------------------------- evaluation

    def evaluate(self, rows: list[dict], prompts: list[str]) -> dict[str, float]:
        """One completion per validation prompt of this worker: reward (and each component), KL (k1) to the
        reference when there is one, length, EOS rate; exact means over every worker's prompts."""
        import torch

        from rlhfctl.models.rollout import policy_logprobs
        from rlhfctl.objectives import ppo as ppo_objective

        sums: dict[str, float] = {"reward_mean": 0.0, "response_length_mean": 0.0, "eos_rate": 0.0, "count": 0.0}
        step = self.training.experience_batch_size * self.training.num_generations
        # FSDP: the workers' validation shares may differ in batches: full weights, no collective per forward
        with self.ctx.gathered(self.policy, self.models.reference, self.models.reward_model):
            for start in range(0, len(prompts), step):
                scored = self._score(rows[start : start + step], prompts[start : start + step])
                generation = scored.generation
                mask = generation.truncated.response_mask
                sums["reward_mean"] += scored.rewards.sum().item()
                for name, values in scored.components.items():
                    sums[f"rewards/{name}"] = sums.get(f"rewards/{name}", 0.0) + values.sum().item()
                if self.models.reference is not None:
                    with torch.no_grad():
                        args = (generation.query_responses, generation.attention_mask, generation.prompt_len,
                                self.temperature)
                        logprobs, _ = policy_logprobs(unwrap_model(self.policy), *args)
                        ref_logprobs, _ = policy_logprobs(self.models.reference, *args)
                    kl = (ppo_objective.kl_per_token(logprobs, ref_logprobs, "k1") * mask).sum().item()
                    sums["kl_k1"] = sums.get("kl_k1", 0.0) + kl
                sums["response_length_mean"] += mask.sum().item()
                sums["eos_rate"] += generation.truncated.has_stop.float().sum().item()
                sums["count"] += mask.shape[0]
        keys = ["reward_mean", "response_length_mean", "eos_rate", "count",
                *(f"rewards/{name}" for name in self._component_names()),
                *(["kl_k1"] if self.models.reference is not None else [])]
        totals = self.ctx.all_reduce_sum({key: sums.get(key, 0.0) for key in keys})  # same keys on every rank
        count = max(totals.pop("count"), 1.0)
        return {key: value / count for key, value in totals.items()}

    def _component_names(self) -> list[str]:
        names = [REWARD_MODEL] if self.models.reward_model is not None else []
        return names + [function.name for function in self.reward_functions]

    # ------------------------------------------------------------------------------------------- export

    def export(self) -> None:
        """The policy and tokenizer to ``checkpoint_dir`` (rank 0)."""
        self.ctx.export(self.ctx.export_model(self.policy), self.models.tokenizer)


def _nonfinite_loss_error(step: int) -> RuntimeFailure:
    """The error for a NaN/inf loss: the update is skipped and the run stops; the last checkpoint is kept."""
    return RuntimeFailure(
        f"grpo training stopped at step {step}: the loss is not finite (NaN or inf) on at least one worker. The "
        "update was not applied and the last checkpoint is the last good state.",
        hint="Lower training.learning_rate or set training.max_grad_norm, check that the reward functions return "
             "finite numbers, then continue with --resume.",
    )
