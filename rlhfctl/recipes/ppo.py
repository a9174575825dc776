"""PPO: optimise the SFT policy against the reward model, held near the SFT model by a per-token KL penalty.

The recipe, top to bottom (driver side first, then the loop every Ray Train worker runs):

1. ``build_job(config)`` -> ``prepare(config)``: check the PPO-specific settings, load the prompts in the driver
   (errors name file, line and key before Ray starts), read the RM export's reward statistics, warn when the
   reward head looks untrained; then a :class:`~rlhfctl.training.job.TrainingJob` with a :class:`PPOPayload`.
   ``plan(config)`` is the core's printable plan of it (``--dry-run``).
2. ``run(config)``: hand that job to the shared core.
3. ``train_loop`` on each worker:

   - **setup**: the policy (``model_pretrain`` or ``model_name``), a frozen reference copy of it, the frozen reward
     model (``rm_pretrain`` or ``rm_name``) and the value model (initialised from the reward model, or from the
     policy's backbone with ``value_model_init = "policy"``); dropout off in all four; policy and value model
     DDP-wrapped, each with its own optimizer and scheduler; then the latest checkpoint if there is one. With
     ``[lora]`` the policy and value model train adapters, the reference is the policy with its adapters off and
     the reward model the value model's base (one copy of each base; see :func:`_build_models`); the policy samples
     with its adapters merged into a copy of its base (``PPOTrainer._generate``).
   - **loop**, one PPO iteration per step, over this worker's shard of the prompts (reshuffled every epoch):
     ``experience_batch_size`` prompts -> generate -> score -> old/ref log-probs and values -> per-token rewards
     (KL penalty + score on the last real token) -> GAE -> whitened advantages -> ``ppo_epochs`` passes of
     ``num_mini_batches`` clipped policy + value updates (micro-batches of ``batch_size``) -> metrics, samples.
     The KL coefficient is fixed or adapted toward ``target_kl``. A non-finite loss on any worker stops the run
     before the optimizer step (the last checkpoint stays the last good one).
   - **validation** before training and after every epoch: responses to the validation prompts, their reward
     score, KL and length.
   - **checkpoint** at ``save_every_steps`` and epoch ends: policy, value model, both optimizers and schedulers,
     the KL controller, RNG states, the sampler position and the episode counter (``--resume`` continues exactly).
   - **export**: the policy and tokenizer to ``checkpoint_dir`` (Hugging Face format), the value model to
     ``checkpoint_dir/value_model``.

The math lives in :mod:`rlhfctl.objectives.ppo`, generation in :mod:`rlhfctl.models.generation`, scoring and
forwards in :mod:`rlhfctl.models.rollout`, the per-iteration machinery (rollout -> advantages -> clipped updates) in
:mod:`rlhfctl.recipes.ppo_trainer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from rlhfctl.config.schema import PPOConfig
from rlhfctl.data.loading import TrainingData, load_training_data
from rlhfctl.errors import ConfigError, ConfigIssue, DataError
from rlhfctl.models.preflight import AdaptedModel, check_model_settings
from rlhfctl.models.vllm_preflight import check_vllm_settings
from rlhfctl.recipes.ppo_trainer import PPOModels, PPOTrainer
from rlhfctl.recipes.registry import Recipe
from rlhfctl.recipes.reward_source import RewardStats, read_reward_stats, reward_head_warning
from rlhfctl.training.batching import evaluation_batches
from rlhfctl.training.checkpoint import TrainState, unwrap_model
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.optim import build_optimizer, build_scheduler
from rlhfctl.training.stage_workload import ForwardPass, Generation, ModelUse, Phase, StageWorkload, rows_bytes
from rlhfctl.training.worker import LoopConfig, WorkerContext, setup_worker

STAGE = "ppo"
# printed after the stage: final metrics by name, 3 decimals each
HEADLINE = ("held-out mean score {validation_initial_score_mean} -> {validation_score_mean}, "
            "KL to the SFT policy {validation_kl_k1}")


@dataclass(frozen=True)
class PPOPayload:
    """What the driver hands every PPO worker besides the config."""

    train_rows: list[dict]  # {"prompt": str | list[message]} rows of the training split
    validation_rows: list[dict]  # held-out prompts (may be empty)
    iterations_per_epoch: int  # PPO iterations (= steps) per pass over each worker's shard
    reward_stats: RewardStats | None  # set when scores are normalised (training.normalize_scores)


@dataclass(frozen=True)
class PPOPlan:
    """What a run will do, PPO's view (the core's printable plan comes from :func:`plan`)."""

    config: PPOConfig
    data: TrainingData
    iterations_per_epoch: int  # PPO iterations (= steps) per pass over the prompts
    total_steps: int
    episodes_per_step: int  # rollouts per iteration over all workers
    reward_stats: RewardStats | None  # the RM export's statistics when scores are normalised
    warnings: tuple[str, ...]  # shown before training starts


def prepare(config: PPOConfig) -> PPOPlan:
    """Validate the PPO settings, load the prompts (raising DataError on bad rows) and count the iterations."""
    training = config.training
    _check_settings(config)
    check_vllm_settings(config)  # generation.backend = "vllm": installed, GPUs, strategy
    data = load_training_data(config.dataset, STAGE, config.general.seed)
    workers = training.num_training_workers
    if len(data.train) < workers:
        raise DataError(f"{len(data.train)} prompts cannot feed {workers} workers", path=data.train_file,
                        hint="Use more prompts or fewer training.num_training_workers.")
    check_model_settings(config, _trained_models(config))
    prompts_per_worker = len(data.train) // workers
    iterations_per_epoch = math.ceil(prompts_per_worker / training.experience_batch_size)
    if training.value_warmup_steps >= iterations_per_epoch * training.epochs:
        raise ConfigError([ConfigIssue(
            "training.value_warmup_steps", f"must be fewer than the run's {iterations_per_epoch * training.epochs} "
            "PPO iterations, or the policy never trains", training.value_warmup_steps)])
    warnings = [message for message in (reward_head_warning(config.reward_source),) if message]
    return PPOPlan(
        config=config,
        data=data,
        iterations_per_epoch=iterations_per_epoch,
        total_steps=iterations_per_epoch * training.epochs,
        episodes_per_step=training.experience_batch_size * workers,
        reward_stats=read_reward_stats(config, required=training.normalize_scores is True)
        if training.normalize_scores else None,
        warnings=tuple(warnings),
    )


def _check_settings(config: PPOConfig) -> None:
    training, generation = config.training, config.generation
    issues = []
    if training.experience_batch_size % training.num_mini_batches:
        issues.append(ConfigIssue(
            "training.num_mini_batches",
            f"must divide training.experience_batch_size ({training.experience_batch_size}) so every mini-batch "
            "has the same number of rollouts", training.num_mini_batches))
    if training.gradient_accumulation_steps != 1:
        issues.append(ConfigIssue(
            "training.gradient_accumulation_steps",
            "PPO takes one optimizer step per mini-batch; set num_mini_batches (and batch_size for the "
            "micro-batches that bound memory) instead", training.gradient_accumulation_steps))
    if config.dataset.max_length <= generation.max_new_tokens:
        issues.append(ConfigIssue(
            "dataset.max_length",
            f"must be larger than generation.max_new_tokens ({generation.max_new_tokens}): prompts get "
            "max_length - max_new_tokens tokens", config.dataset.max_length))
    if issues:
        raise ConfigError(issues)


def _trained_models(config: PPOConfig) -> list[AdaptedModel]:
    """The policy and the value model, where each comes from (what [lora] and checkpointing apply to)."""
    general = config.general
    policy_key = "general.model_pretrain" if general.model_pretrain else "general.model_name"
    policy = AdaptedModel(policy_key, config.policy_source, "causal")
    if config.training.value_model_init == "policy":
        return [policy, AdaptedModel(policy_key, config.policy_source, "score")]
    reward_key = "general.rm_pretrain" if general.rm_pretrain else "general.rm_name"
    return [policy, AdaptedModel(reward_key, config.reward_source, "score")]


def build_job(config: PPOConfig) -> TrainingJob[PPOConfig, PPOPayload]:
    """:func:`prepare`, then the core's job description (the prompts travel to the workers in the payload; the
    warnings are the plan's last lines and logged when the run starts)."""
    ppo_plan = prepare(config)
    training, generation = config.training, config.generation
    return TrainingJob(
        stage=STAGE,
        config=config,
        train_loop=train_loop,
        payload=PPOPayload(
            train_rows=ppo_plan.data.train,
            validation_rows=ppo_plan.data.validation,
            iterations_per_epoch=ppo_plan.iterations_per_epoch,
            reward_stats=ppo_plan.reward_stats,
        ),
        total_steps=ppo_plan.total_steps,
        samples_per_step=ppo_plan.episodes_per_step,
        train_rows=len(ppo_plan.data.train),
        validation_rows=len(ppo_plan.data.validation),
        steps_per_epoch=ppo_plan.iterations_per_epoch,
        plan_notes={
            "policy": config.policy_source,
            "reward model": config.reward_source,
            "rollouts per step": f"{training.experience_batch_size} per worker; {training.ppo_epochs} PPO epoch(s) "
                                 f"of {training.num_mini_batches} mini-batch(es)",
            "response length": f"up to {generation.max_new_tokens} new tokens",
            "KL": f"{training.kl_estimator}, coef {training.kl_coeff}"
                  + (f" adapting toward {training.target_kl}" if training.target_kl else " (fixed)"),
            "scores": _scores_note(ppo_plan.reward_stats, config),
            "validation": ppo_plan.data.validation_source,
        },
        warnings=ppo_plan.warnings,
        memory=partial(memory_workload, data=ppo_plan.data),
    )


def memory_workload(config: PPOConfig, data: TrainingData) -> StageWorkload:
    """The memory hook: four models (the reference runs on the policy's base when LoRA is on) and the phases of an
    iteration — generation of ``experience_batch_size`` responses with the KV cache (with LoRA, from a merged copy
    of the policy's adapted weights) and their reward scores; the
    no-grad rollout forwards in chunks of ``batch_size``; validation (the policy and reference log-probs of a whole
    experience batch at once); the update micro-step: the policy's log-probs (full-vocabulary logits over the
    response) and their backward, then the value model's forward and backward beside the policy's gradients."""
    training, generation = config.training, config.generation
    length, new_tokens = config.dataset.max_length, generation.max_new_tokens
    prompt_length = length - new_tokens
    experiences = training.experience_batch_size
    micro = min(training.batch_size, experiences // training.num_mini_batches)
    chunk = min(training.batch_size, experiences)
    value_source = config.reward_source if training.value_model_init == "reward" else config.policy_source

    def logprobs(role: str, rows: int, grad: bool) -> ForwardPass:
        return ForwardPass(role, rows, length, grad=grad, loss="logprobs", response_length=new_tokens)

    phases = [
        Phase("generation", (Generation("policy", experiences, prompt_length, new_tokens, merges_adapters=True),
                             ForwardPass("reward_model", experiences, length, grad=False, loss="score",
                                         reads_per_row=1)), together=False),
        Phase("rollout forwards", (logprobs("policy", chunk, False), logprobs("reference", chunk, False),
                                   ForwardPass("value_model", chunk, length, grad=False, loss="score")),
              together=False),
        # one backward per model (PPOTrainer._micro_batch_backward): the policy's activations are freed before the
        # value model's forward, whose pass runs beside the policy's gradients
        Phase("update: policy", (logprobs("policy", micro, True),)),
        Phase("update: value model", (ForwardPass("value_model", micro, length, grad=True, loss="score"),),
              gradients_of=("policy",)),
    ]
    if data.validation:
        phases.append(Phase("validation", (logprobs("policy", experiences, False),
                                           logprobs("reference", experiences, False)), together=False))
    return StageWorkload(
        models=(ModelUse("policy", config.policy_source, head="lm", trained=True),
                ModelUse("reference", config.policy_source, head="lm", trained=False,
                         lora_shares_base_with="policy"),
                ModelUse("reward_model", config.reward_source, head="score", trained=False,
                         lora_shares_base_with="value_model" if value_source == config.reward_source else None),
                ModelUse("value_model", value_source, head="score", trained=True)),
        phases=tuple(phases),
        data_bytes=rows_bytes(data.train + data.validation, token_lists_per_row=0, max_length=length),
    )


def _scores_note(stats: RewardStats | None, config: PPOConfig) -> str:
    if stats is not None:
        return f"normalised: (score - {stats.mean:.4g}) / {stats.std:.4g} (the RM export's reward_stats.json)"
    if config.training.normalize_scores == "auto":
        return "raw (no reward_stats.json in general.rm_pretrain to normalise with)"
    return "raw (training.normalize_scores = false)"


# ----------------------------------------------------------------------------------------------- worker side


def train_loop(loop_config: LoopConfig) -> dict[str, float]:
    """The loop every Ray Train worker runs (module level, so Ray can pickle it)."""
    import time

    from rlhfctl.models.rollout import ScoreSettings
    from rlhfctl.objectives import ppo as ppo_objective

    ctx: WorkerContext[PPOConfig, PPOPayload] = setup_worker(loop_config)
    config, payload = ctx.config, ctx.payload
    training = config.training

    # -- setup: four models, optimizers, schedulers, KL controller; then the latest checkpoint if any
    models = _build_models(config, ctx.device)
    policy = ctx.prepare_model(models.policy)
    value_model = ctx.prepare_model(models.value_model)
    for frozen in (models.reference, models.reward_model):  # FSDP: sharded too (DDP: as loaded)
        ctx.prepare_frozen(frozen)
    steps_per_iteration = training.ppo_epochs * training.num_mini_batches
    optimizer_steps = {"policy": max(ctx.total_steps - training.value_warmup_steps, 1) * steps_per_iteration,
                       "value_model": ctx.total_steps * steps_per_iteration}  # the policy waits out the warm-up
    optimizers = {"policy": build_optimizer(policy, training), "value_model": build_optimizer(value_model, training)}
    schedulers = {name: build_scheduler(optimizer, training, optimizer_steps[name])
                  for name, optimizer in optimizers.items()}
    kl_controller = ppo_objective.KLController(training.kl_coeff, training.target_kl or None, training.kl_horizon)
    state = TrainState(
        models={"policy": unwrap_model(policy), "value_model": unwrap_model(value_model)},
        optimizers=optimizers, schedulers=schedulers,
        extra={"kl_controller": kl_controller.state_dict(), "episodes": 0},
    )
    ctx.restore(state)
    kl_controller.load_state_dict(state.extra["kl_controller"])
    stats = payload.reward_stats
    score_settings = ScoreSettings(reward_mean=stats.mean if stats else None, reward_std=stats.std if stats else None,
                                   score_clip=training.score_clip, missing_eos_penalty=training.missing_eos_penalty)
    trainer = PPOTrainer(
        ctx=ctx, models=models, policy=policy, value_model=value_model, optimizers=optimizers,
        schedulers=schedulers, kl_controller=kl_controller, score_settings=score_settings,
    )
    train_prompts = trainer.render_prompts(payload.train_rows)
    validation_prompts = trainer.render_prompts(payload.validation_rows)
    validation_batches = evaluation_batches(validation_prompts, rank=ctx.rank, world_size=ctx.world_size,
                                          batch_size=training.experience_batch_size)

    validation: dict[str, float] = {}
    if state.step == 0 and validation_prompts:
        validation = trainer.evaluate(validation_batches)
        ctx.log(0, validation, epoch=0, split="validation")
        state.extra["initial_validation_score"] = validation["score_mean"]

    # -- loop: one PPO iteration per step over this worker's shard, reshuffled every epoch
    iterations_per_epoch = payload.iterations_per_epoch
    batch_size = training.experience_batch_size
    metrics: dict[str, float] = {}
    start_epoch, start_batch = state.epoch, state.batch_in_epoch
    for epoch in range(start_epoch, training.epochs):
        shard = ctx.shard(len(train_prompts), epoch)
        first = start_batch if epoch == start_epoch else 0
        for batch_index in range(first, iterations_per_epoch):
            started = time.perf_counter()
            # a fixed batch size keeps every worker in step; the last batch wraps around to the shard's start
            prompts = [train_prompts[shard[(batch_index * batch_size + i) % len(shard)]] for i in range(batch_size)]
            state.step += 1
            metrics, samples = trainer.iteration(prompts, step=state.step,
                                                 with_samples=_samples_due(training, state.step))
            state.extra["episodes"] += batch_size * ctx.world_size
            metrics["episodes"] = float(state.extra["episodes"])
            metrics["episodes_per_s"] = batch_size * ctx.world_size / (time.perf_counter() - started)
            ctx.log(state.step, metrics, epoch=epoch, split="train")
            if samples:
                ctx.log_samples(state.step, samples)
            state.epoch, state.batch_in_epoch = epoch, batch_index + 1
            state.extra["kl_controller"] = kl_controller.state_dict()
            if ctx.checkpoint_due(state.step) and state.batch_in_epoch < iterations_per_epoch:
                ctx.save(state, metrics)
        if validation_prompts:
            validation = trainer.evaluate(validation_batches)
            ctx.log(state.step, validation, epoch=epoch, split="validation")
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        ctx.save(state, {**metrics, **{f"validation_{key}": value for key, value in validation.items()}})

    # -- export: the policy (PPO's result) and, beside it, the trained value model
    trainer.export()
    final = {f"train_{key}": value for key, value in metrics.items() if not key.startswith("time_")}
    final.update({f"validation_{key}": value for key, value in validation.items()})
    if "initial_validation_score" in state.extra:
        final["validation_initial_score_mean"] = float(state.extra["initial_validation_score"])
    return final


def _build_models(config: PPOConfig, device) -> PPOModels:
    """Load policy, reference, reward and value models; dropout off in all four, the reference and reward frozen.

    With ``[lora]`` the policy and the value model train adapters and the frozen models are trained ones with their
    adapters off, so each base is held once: the reference is the policy's base (``WithoutAdapters``) and, when the
    value model starts from the reward model (``value_model_init = "reward"``), the reward model is the value
    model's base with its original, trained score head (the value head is peft's trainable copy of it).
    """
    from rlhfctl.models.adapters import WithoutAdapters, adapt_for_training
    from rlhfctl.models.loading import (
        check_same_vocabulary,
        disable_dropout,
        ensure_distinct_pad_token,
        load_model,
        load_tokenizer,
    )
    from rlhfctl.models.scoring import TokenScoreModel

    trust = config.general.trust_remote_code
    lora = config.lora is not None
    value_source = config.reward_source if config.training.value_model_init == "reward" else config.policy_source
    shares_reward_base = lora and value_source == config.reward_source
    tokenizer = load_tokenizer(config.policy_source, trust_remote_code=trust, padding_side="left")
    policy = load_model("AutoModelForCausalLM", config.policy_source, trust_remote_code=trust)
    reference = None if lora else load_model("AutoModelForCausalLM", config.policy_source, trust_remote_code=trust)
    reward_model, load_info = load_model("AutoModelForSequenceClassification", config.reward_source,
                                         trust_remote_code=trust, num_labels=1, output_loading_info=True)
    value_model = reward_model if shares_reward_base else load_model(
        "AutoModelForSequenceClassification", value_source, trust_remote_code=trust, num_labels=1)
    check_same_vocabulary(tokenizer, reward_model, config.reward_source)
    loaded = list({id(model): model for model in (policy, reference, reward_model, value_model) if model}.values())
    # A new pad token would change the bases LoRA adapts (and that its adapter exports name): EOS pads then.
    if not lora and ensure_distinct_pad_token(tokenizer):
        for model in loaded:
            if model.get_input_embeddings().num_embeddings < len(tokenizer):
                model.resize_token_embeddings(len(tokenizer))
    for model in loaded:
        disable_dropout(model)  # before LoRA: lora.dropout stays as configured
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device)
    adapt_for_training(policy, config, source=config.policy_source)
    adapt_for_training(value_model, config, source=value_source, score_head=True)
    for frozen in (reference, None if shares_reward_base else reward_model):
        if frozen is not None:
            frozen.eval().requires_grad_(False)
    policy.train()
    value_model.train()
    missing = list(load_info.get("missing_keys", []))
    head_fresh = any(name.split(".")[-2:-1] in (["score"], ["classifier"]) for name in missing)
    return PPOModels(policy, reference if reference is not None else WithoutAdapters(policy),
                     TokenScoreModel(reward_model, adapters=not shares_reward_base), TokenScoreModel(value_model),
                     tokenizer, head_fresh)


def _samples_due(training, step: int) -> bool:
    return training.sample_every_steps > 0 and (step == 1 or step % training.sample_every_steps == 0)


RECIPE = Recipe(stage=STAGE, build_job=build_job, headline_template=HEADLINE)
plan, run = RECIPE.plan, RECIPE.run  # ppo.plan(config) -> TrainingPlan, ppo.run(config, resume=...) -> RunSummary
