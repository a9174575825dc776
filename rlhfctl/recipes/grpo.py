"""GRPO: improve the policy with group-relative advantages, no value model (RLOO's baseline with ``rloo = true``).

The recipe, top to bottom (driver side first, then the loop every Ray Train worker runs):

1. ``build_job(config)`` -> ``prepare(config)``: check the GRPO-specific settings, check that every ``python``
   reward function imports and is marked as one, load the prompts in the driver with the keys the reward
   functions read (errors name file, line and key before Ray starts), warn when the reward model's head looks
   untrained; then a :class:`~rlhfctl.training.job.TrainingJob` with a :class:`GRPOPayload`.
2. ``run(config)``: hand that job to the shared core.
3. ``train_loop`` on each worker:

   - **setup**: the policy (``model_pretrain`` or ``model_name``), a frozen reference copy of it unless
     ``beta = 0`` (with ``[lora]``: the policy with its adapters off, no copy), the frozen reward model when the
     reward uses one; dropout off; the policy DDP-wrapped with its
     optimizer and scheduler; the reward functions; then the latest checkpoint if there is one.
   - **loop**, one iteration per step over this worker's shard of the prompts (reshuffled every epoch):
     ``experience_batch_size`` prompts x ``num_generations`` completions -> rewards (reward model and/or
     functions, weighted) -> group-relative advantages -> reference log-probs (``beta > 0``; the sampling
     policy's come from the decoder, no forward) -> ``ppo_epochs`` passes of ``num_mini_batches`` clipped updates
     with the k3 KL term -> metrics, samples.
   - **validation** before training and after every epoch: one completion per held-out prompt, its reward (and
     each component), KL to the reference, length.
   - **checkpoint** at ``save_every_steps`` and epoch ends (policy, optimizer, scheduler, RNG states, the
     sampler position, the episode counter: ``--resume`` continues exactly); **export**: the policy (HF format).

Maths: :mod:`rlhfctl.objectives.grpo`; rewards: :mod:`rlhfctl.recipes.grpo_rewards`; the per-iteration
machinery: :mod:`rlhfctl.recipes.grpo_trainer`. One episode = one completion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from rlhfctl.config.schema import GRPOConfig
from rlhfctl.data.loading import TrainingData, load_training_data
from rlhfctl.errors import ConfigError, ConfigIssue, DataError
from rlhfctl.models.preflight import AdaptedModel, check_model_settings
from rlhfctl.models.vllm_preflight import check_vllm_settings
from rlhfctl.recipes.grpo_rewards import build_reward_functions, row_keys
from rlhfctl.recipes.registry import Recipe
from rlhfctl.recipes.reward_source import reward_head_warning
from rlhfctl.training.checkpoint import TrainState, unwrap_model
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.optim import build_optimizer, build_scheduler
from rlhfctl.training.stage_workload import ForwardPass, Generation, ModelUse, Phase, StageWorkload, rows_bytes
from rlhfctl.training.worker import LoopConfig, WorkerContext, setup_worker

STAGE = "grpo"
# printed after the stage: final metrics by name, 3 decimals each
HEADLINE = ("held-out mean reward {validation_initial_reward_mean} -> {validation_reward_mean}, "
            "response length {validation_response_length_mean}")


@dataclass(frozen=True)
class GRPOPayload:
    """What the driver hands every GRPO worker besides the config."""

    train_rows: list[dict]  # {"prompt": str | list[message], + the keys the reward functions read}
    validation_rows: list[dict]  # held-out prompts (may be empty)
    iterations_per_epoch: int  # iterations (= steps) per pass over each worker's shard


@dataclass(frozen=True)
class GRPOPlan:
    """What a run will do, GRPO's view (the core's printable plan comes from :func:`build_job`)."""

    data: TrainingData
    iterations_per_epoch: int
    total_steps: int
    episodes_per_step: int  # completions per iteration over all workers
    warnings: tuple[str, ...]


def prepare(config: GRPOConfig) -> GRPOPlan:
    """Validate the GRPO settings and reward functions, load the prompts (DataError on bad rows), count steps."""
    training = config.training
    _check_settings(config)
    check_vllm_settings(config)  # generation.backend = "vllm": installed, GPUs, strategy
    build_reward_functions(config)  # imports user functions now: an unusable one fails before any worker starts
    data = load_training_data(config.dataset, "ppo", config.general.seed, extra_keys=row_keys(config))
    workers = training.num_training_workers
    if len(data.train) < workers:
        raise DataError(f"{len(data.train)} prompts cannot feed {workers} workers", path=data.train_file,
                        hint="Use more prompts or fewer training.num_training_workers.")
    policy_key = "general.model_pretrain" if config.general.model_pretrain else "general.model_name"
    check_model_settings(config, [AdaptedModel(policy_key, config.policy_source, "causal")])
    iterations_per_epoch = math.ceil(len(data.train) // workers / training.experience_batch_size)
    warnings = []
    if config.uses_reward_model:
        warnings.append(reward_head_warning(config.reward_source))
    return GRPOPlan(
        data=data, iterations_per_epoch=iterations_per_epoch, total_steps=iterations_per_epoch * training.epochs,
        episodes_per_step=training.experience_batch_size * training.num_generations * workers,
        warnings=tuple(message for message in warnings if message),
    )


def _check_settings(config: GRPOConfig) -> None:
    training, generation = config.training, config.generation
    issues = []
    if training.experience_batch_size % training.num_mini_batches:
        issues.append(ConfigIssue(
            "training.num_mini_batches",
            f"must divide training.experience_batch_size ({training.experience_batch_size}): a mini-batch holds "
            f"whole groups of num_generations ({training.num_generations}) completions, and "
            f"{training.experience_batch_size} groups do not split into {training.num_mini_batches} equal parts",
            training.num_mini_batches))
    if training.gradient_accumulation_steps != 1:
        issues.append(ConfigIssue(
            "training.gradient_accumulation_steps",
            "GRPO takes one optimizer step per mini-batch; set num_mini_batches (and batch_size for the "
            "micro-batches that bound memory) instead", training.gradient_accumulation_steps))
    if config.dataset.max_length <= generation.max_new_tokens:
        issues.append(ConfigIssue(
            "dataset.max_length",
            f"must be larger than generation.max_new_tokens ({generation.max_new_tokens}): prompts get "
            "max_length - max_new_tokens tokens", config.dataset.max_length))
    if issues:
        raise ConfigError(issues)


def build_job(config: GRPOConfig) -> TrainingJob[GRPOConfig, GRPOPayload]:
    """:func:`prepare`, then the core's job description (prompts travel to the workers in the payload)."""
    grpo_plan = prepare(config)
    training, generation = config.training, config.generation
    rewards = [f"reward model {config.reward_source} x {config.reward.model_weight:g}"] if config.uses_reward_model \
        else []
    rewards += [f"{spec.name} x {spec.weight:g}" for spec in config.reward.functions]
    baseline = "leave-one-out (RLOO)" if training.rloo else "group mean"
    return TrainingJob(
        stage=STAGE,
        config=config,
        train_loop=train_loop,
        payload=GRPOPayload(train_rows=grpo_plan.data.train, validation_rows=grpo_plan.data.validation,
                            iterations_per_epoch=grpo_plan.iterations_per_epoch),
        total_steps=grpo_plan.total_steps,
        samples_per_step=grpo_plan.episodes_per_step,
        train_rows=len(grpo_plan.data.train),
        validation_rows=len(grpo_plan.data.validation),
        steps_per_epoch=grpo_plan.iterations_per_epoch,
        plan_notes={
            "policy": config.policy_source,
            "reward": "; ".join(rewards),
            "completions per step": f"{training.experience_batch_size} prompts x {training.num_generations} per "
                                    f"worker; {training.ppo_epochs} pass(es) of {training.num_mini_batches} "
                                    "mini-batch(es)",
            "advantage": baseline + (", divided by the group std" if training.scale_rewards else ""),
            "loss": f"clipped surrogate (epsilon {training.epsilon:g}), " + (
                "averaged per completion, then over completions" if training.loss_aggregation == "sequence"
                else "averaged over every completion token"),
            "KL": f"k3 to the initial policy, beta {training.beta:g}" if training.beta else "none (beta = 0)",
            "response length": f"up to {generation.max_new_tokens} new tokens",
            "validation": grpo_plan.data.validation_source,
            "unit": "episodes (one completion each)",
        },
        warnings=grpo_plan.warnings,
        memory=partial(memory_workload, data=grpo_plan.data),
    )


def memory_workload(config: GRPOConfig, data: TrainingData) -> StageWorkload:
    """The memory hook: the policy, its frozen reference unless ``beta = 0`` (on the policy's base with LoRA), the
    reward model when the reward uses one; the phases of an iteration — generation of ``experience_batch_size x
    num_generations`` completions with the KV cache and their reward scores; the reference's no-grad log-prob
    forward in chunks of ``batch_size`` (the sampling policy's log-probs come from the decoder); the update
    micro-step over ``batch_size`` completions; validation (generation, then the policy's and the reference's
    log-probs of one such batch at once)."""
    training, generation = config.training, config.generation
    length, new_tokens = config.dataset.max_length, generation.max_new_tokens
    completions = training.experience_batch_size * training.num_generations
    micro = min(training.batch_size, completions // training.num_mini_batches)
    chunk = min(training.batch_size, completions)

    def logprobs(role: str, rows: int, grad: bool) -> ForwardPass:
        return ForwardPass(role, rows, length, grad=grad, loss="logprobs", response_length=new_tokens)

    models = [ModelUse("policy", config.policy_source, head="lm", trained=True)]
    if training.beta:
        models.append(ModelUse("reference", config.policy_source, head="lm", trained=False,
                               lora_shares_base_with="policy"))
    if config.uses_reward_model:
        models.append(ModelUse("reward_model", config.reward_source, head="score", trained=False))
    generate: list = [Generation("policy", completions, length - new_tokens, new_tokens)]
    if config.uses_reward_model:
        generate.append(ForwardPass("reward_model", completions, length, grad=False, loss="score", reads_per_row=1))
    forwards = [logprobs("reference", chunk, False)] if training.beta else []
    phases = [Phase("generation", tuple(generate), together=False)]
    if forwards:
        phases.append(Phase("rollout forwards", tuple(forwards), together=False))
    phases.append(Phase("update", (logprobs("policy", micro, True),)))
    if data.validation:
        checked = [logprobs("policy", completions, False)] + ([logprobs("reference", completions, False)]
                                                               if training.beta else [])
        phases.append(Phase("validation", tuple(checked), together=False))
    return StageWorkload(
        models=tuple(models), phases=tuple(phases),
        data_bytes=rows_bytes(data.train + data.validation, token_lists_per_row=0, max_length=length),
    )


# ----------------------------------------------------------------------------------------------- worker side


def train_loop(loop_config: LoopConfig) -> dict[str, float]:
    """The loop every Ray Train worker runs (module level, so Ray can pickle it)."""
    import time

    from rlhfctl.recipes.grpo_trainer import GRPOTrainer

    ctx: WorkerContext[GRPOConfig, GRPOPayload] = setup_worker(loop_config)
    config, payload = ctx.config, ctx.payload
    training = config.training

    # -- setup: policy (+ reference, reward model), optimizer, scheduler, reward functions; then the checkpoint
    models = _build_models(config, ctx.device)
    policy = ctx.prepare_model(models.policy)
    for frozen in (models.reference, models.reward_model):  # FSDP: sharded too (DDP: as loaded)
        ctx.prepare_frozen(frozen)
    optimizer = build_optimizer(policy, training)
    scheduler = build_scheduler(optimizer, training, ctx.total_steps * training.ppo_epochs * training.num_mini_batches)
    state = TrainState(models={"policy": unwrap_model(policy)}, optimizers={"policy": optimizer},
                       schedulers={"policy": scheduler}, extra={"episodes": 0})
    ctx.restore(state)
    trainer = GRPOTrainer(ctx=ctx, models=models, policy=policy, optimizer=optimizer, scheduler=scheduler,
                          reward_functions=build_reward_functions(config))
    train_prompts = trainer.render_prompts(payload.train_rows)
    validation_rows = payload.validation_rows[ctx.rank :: ctx.world_size]
    validation_prompts = trainer.render_prompts(validation_rows)

    validation: dict[str, float] = {}
    if state.step == 0 and payload.validation_rows:
        validation = trainer.evaluate(validation_rows, validation_prompts)
        ctx.log(0, validation, epoch=0, split="validation")
        state.extra["initial_validation_reward"] = validation["reward_mean"]

    # -- loop: one iteration per step over this worker's shard, reshuffled every epoch
    batch_size = training.experience_batch_size
    episodes_per_step = batch_size * training.num_generations * ctx.world_size
    metrics: dict[str, float] = {}
    start_epoch, start_batch = state.epoch, state.batch_in_epoch
    for epoch in range(start_epoch, training.epochs):
        shard = ctx.shard(len(train_prompts), epoch)
        first = start_batch if epoch == start_epoch else 0
        for batch_index in range(first, payload.iterations_per_epoch):
            started = time.perf_counter()
            # a fixed batch size keeps every worker in step; the last batch wraps around to the shard's start
            picked = [shard[(batch_index * batch_size + i) % len(shard)] for i in range(batch_size)]
            state.step += 1
            metrics, samples = trainer.iteration([payload.train_rows[i] for i in picked],
                                                 [train_prompts[i] for i in picked], step=state.step,
                                                 with_samples=_samples_due(training, state.step))
            state.extra["episodes"] += episodes_per_step
            metrics["episodes"] = float(state.extra["episodes"])
            metrics["episodes_per_s"] = episodes_per_step / (time.perf_counter() - started)
            ctx.log(state.step, metrics, epoch=epoch, split="train")
            if samples:
                ctx.log_samples(state.step, samples)
            state.epoch, state.batch_in_epoch = epoch, batch_index + 1
            if ctx.checkpoint_due(state.step) and state.batch_in_epoch < payload.iterations_per_epoch:
                ctx.save(state, metrics)
        if payload.validation_rows:
            validation = trainer.evaluate(validation_rows, validation_prompts)
            ctx.log(state.step, validation, epoch=epoch, split="validation")
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        ctx.save(state, {**metrics, **{f"validation_{key}": value for key, value in validation.items()}})

    # -- export: the policy
    trainer.export()
    final = {f"train_{key}": value for key, value in metrics.items() if not key.startswith("time_")}
    final.update({f"validation_{key}": value for key, value in validation.items()})
    if "initial_validation_reward" in state.extra:
        final["validation_initial_reward_mean"] = float(state.extra["initial_validation_reward"])
    return final


def _build_models(config: GRPOConfig, device):
    """Load the policy, the reference (``beta > 0``) and the reward model (when used); dropout off, frozen ones
    in eval mode without gradients. With ``[lora]`` the policy trains adapters and the reference is the policy with
    its adapters off (``WithoutAdapters``: one copy of the base)."""
    from rlhfctl.models.adapters import WithoutAdapters, adapt_for_training
    from rlhfctl.models.loading import check_same_vocabulary, disable_dropout, load_model, load_tokenizer
    from rlhfctl.models.scoring import TokenScoreModel
    from rlhfctl.recipes.grpo_trainer import GRPOModels

    trust = config.general.trust_remote_code
    source = config.policy_source
    tokenizer = load_tokenizer(source, trust_remote_code=trust, padding_side="left")
    policy = load_model("AutoModelForCausalLM", source, trust_remote_code=trust)
    lora = config.lora is not None
    separate_reference = config.training.beta and not lora
    reference = load_model("AutoModelForCausalLM", source, trust_remote_code=trust) if separate_reference else None
    reward_model = None
    if config.uses_reward_model:
        reward_model = load_model("AutoModelForSequenceClassification", config.reward_source,
                                  trust_remote_code=trust, num_labels=1)
        check_same_vocabulary(tokenizer, reward_model, config.reward_source)
    loaded = [model for model in (policy, reference, reward_model) if model is not None]
    for model in loaded:
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        disable_dropout(model)  # before LoRA: lora.dropout stays as configured
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device)
    adapt_for_training(policy, config, source=source)  # [lora], gradient checkpointing
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.eval().requires_grad_(False)
    policy.train()
    if lora and config.training.beta:
        reference = WithoutAdapters(policy)
    return GRPOModels(policy, reference, TokenScoreModel(reward_model) if reward_model is not None else None,
                      tokenizer)


def _samples_due(training, step: int) -> bool:
    return training.sample_every_steps > 0 and (step == 1 or step % training.sample_every_steps == 0)


RECIPE = Recipe(stage=STAGE, build_job=build_job, headline_template=HEADLINE)
plan, run = RECIPE.plan, RECIPE.run  # grpo.plan(config) -> TrainingPlan, grpo.run(config, resume=...) -> RunSummary
