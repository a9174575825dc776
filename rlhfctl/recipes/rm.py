"""Reward-model stage: learn a scalar score that ranks the chosen reply above the rejected one.

Supports: any ``AutoModelForSequenceClassification``-loadable model (a causal LM gets a new scalar head, a
previous RM export continues), prompts as text or message lists (chat template or the plain template),
per-row ``margin``, ``center_rewards_coefficient``, gradient accumulation, clipping, mixed precision, resume,
LoRA (``[lora]``: adapters on the backbone, the score head trained in full) and gradient checkpointing.

Recipe, top to bottom:
    driver:  build_job  -> load + validate data (before Ray), count steps        (plan / run call it)
    worker:  train_loop -> tokenizer, model, tokenized pairs -> optimizer, scheduler -> restore
                           -> per epoch: length-bucketed batches, chosen+rejected in ONE forward (packed
                              behind their shared prompt where the model allows), pairwise loss
                           -> validation every epoch (with the length-bias statistics the [monitor] checks read)
                           -> checkpoint -> export with reward_stats.json
Texts are ``format_prompt(prompt) + response + EOS``; a text longer than ``dataset.max_length`` loses tokens from
the **left of the prompt**, so the response end, where the reward is read, is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from rlhfctl.config.schema import RMConfig
from rlhfctl.data.loading import TrainingData, load_training_data
from rlhfctl.errors import DataError
from rlhfctl.models.preflight import AdaptedModel, check_model_settings
from rlhfctl.recipes.registry import Recipe
from rlhfctl.runfiles import REWARD_STATS_FILE
from rlhfctl.training.batching import (
    balanced_shares,
    length_bucketed_batches,
    micro_batches_per_epoch,
    steps_per_epoch,
)
from rlhfctl.training.checkpoint import TrainState, unwrap_model
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.optim import build_optimizer, build_scheduler
from rlhfctl.training.stage_workload import ForwardPass, ModelUse, Phase, StageWorkload, rows_bytes
from rlhfctl.training.worker import LoopConfig, WorkerContext, setup_worker

STAGE = "rm"
# printed after the stage: final metrics by name, 3 decimals each
HEADLINE = "held-out accuracy {validation_accuracy}, margin {validation_margin}"


@dataclass(frozen=True)
class RMPayload:
    """What the driver hands every RM worker besides the config."""

    train_rows: list[dict]  # {"prompt", "chosen", "rejected", "margin"} rows of the training split
    validation_rows: list[dict]  # the held-out split (empty: validation scores the training pairs)


# ----------------------------------------------------------------------------------------------- driver


def build_job(config: RMConfig) -> TrainingJob[RMConfig, RMPayload]:
    """Load and check the data in the driver (errors name file, line and key) and size the run."""
    data = load_training_data(config.dataset, "rm", config.general.seed)
    training = config.training
    workers = training.num_training_workers
    if len(data.train) < workers:
        raise DataError(f"{len(data.train)} training rows cannot be shared by {workers} workers "
                        "(each needs at least one)", path=data.train_file)
    check_model_settings(config, [AdaptedModel("general.base_model", config.general.base_model, "score")])
    per_epoch = steps_per_epoch(len(data.train), workers, training.batch_size, training.gradient_accumulation_steps)
    return TrainingJob(
        stage=STAGE, config=config, train_loop=train_loop,
        payload=RMPayload(train_rows=data.train, validation_rows=data.validation),
        total_steps=per_epoch * training.epochs,
        samples_per_step=workers * training.batch_size * training.gradient_accumulation_steps,
        train_rows=len(data.train), validation_rows=len(data.validation), steps_per_epoch=per_epoch,
        plan_notes={"validation": data.validation_source, "max length": f"{config.dataset.max_length} tokens",
                    "model": config.general.base_model, "unit": "preference pairs"},
        memory=partial(memory_workload, data=data),
    )


def memory_workload(config: RMConfig, data: TrainingData) -> StageWorkload:
    """The memory hook: one trained scalar-head model; a micro-step scores ``batch_size`` pairs (chosen and
    rejected: twice as many sequences of up to ``max_length`` tokens), read at the last token; validation scores
    as many without gradients."""
    training, length = config.training, config.dataset.max_length
    sequences = 2 * training.batch_size
    return StageWorkload(
        models=(ModelUse("reward_model", config.general.base_model, head="score", trained=True),),
        phases=(
            Phase("train step", (ForwardPass("reward_model", sequences, length, grad=True, loss="score",
                                             reads_per_row=1),)),
            Phase("validation", (ForwardPass("reward_model", sequences, length, grad=False, loss="score",
                                             reads_per_row=1),)),
        ),
        data_bytes=rows_bytes(data.train + data.validation, token_lists_per_row=2, max_length=length),
    )


# ----------------------------------------------------------------------------------------------- worker


def train_loop(loop_config: LoopConfig) -> dict[str, float]:
    """Runs on every Ray Train worker (module-level so Ray can pickle it)."""
    from rlhfctl.models.adapters import adapt_for_training
    from rlhfctl.models.loading import disable_dropout, load_reward_model, load_tokenizer
    from rlhfctl.models.preference import (
        collate_for,
        collate_pairs,
        pair_cost_lengths,
        response_lengths,
        score_pairs,
        tokenize_pairs,
    )
    from rlhfctl.models.scoring import make_scorer
    from rlhfctl.objectives.rm import pairwise_loss

    ctx: WorkerContext[RMConfig, RMPayload] = setup_worker(loop_config)
    config, payload = ctx.config, ctx.payload
    training = config.training
    trust = config.general.trust_remote_code

    # Model and data.
    tokenizer = load_tokenizer(config.general.base_model, trust_remote_code=trust)
    model = load_reward_model(config.general.base_model, tokenizer, trust_remote_code=trust)
    disable_dropout(model)  # before LoRA: lora.dropout stays as configured
    model = adapt_for_training(model, config, source=config.general.base_model, score_head=True)
    ctx.phase(f"tokenising {len(payload.train_rows) + len(payload.validation_rows):,} pairs")
    train_pairs = tokenize_pairs(payload.train_rows, tokenizer, config.dataset.max_length)
    validation_pairs = tokenize_pairs(payload.validation_rows, tokenizer, config.dataset.max_length)
    evaluated_pairs = validation_pairs or train_pairs  # without held-out pairs, validation scores the training pairs
    evaluated_lengths = response_lengths(payload.validation_rows or payload.train_rows, tokenizer,
                                         config.dataset.max_length)
    lengths = pair_cost_lengths(train_pairs, packed=False)  # bucketing key: the longer sequence of a pair

    scorer = ctx.prepare_model(make_scorer(model))
    optimizer = build_optimizer(scorer, training)
    scheduler = build_scheduler(optimizer, training, ctx.total_steps)
    state = TrainState(models={"reward_model": scorer}, optimizers={"reward_model": optimizer},
                       schedulers={"reward_model": scheduler})
    ctx.restore(state)

    collate = collate_for(scorer)
    cost_lengths = pair_cost_lengths(train_pairs, packed=collate is not collate_pairs)
    accumulation = training.gradient_accumulation_steps
    micro_per_epoch = micro_batches_per_epoch(len(train_pairs), ctx.world_size, training.batch_size)
    train_metrics: dict[str, float] = {}
    validation_metrics: dict[str, float] | None = None
    scorer.train()
    for epoch in range(state.epoch, training.epochs):
        # Every worker's length-bucketed batches (each worker computes all of them, from the seed).
        batches_by_rank = [length_bucketed_batches(ctx.shard(len(train_pairs), epoch, rank=rank), lengths,
                                                   training.batch_size, seed=ctx.seed * 7919 + epoch + 1000 * rank)
                           for rank in range(ctx.world_size)]
        window: list[tuple[dict[str, float], int]] = []  # (metrics, pairs) per micro-batch
        for micro_index in range(state.batch_in_epoch, micro_per_epoch):
            # A micro-step trains on the workers' batches together; they are re-cut into shares of even padded
            # cost so no worker waits for a longer one. Weighting each share's mean loss by its size keeps the
            # averaged gradient the mean over every pair of the step.
            step_rows = [row for batches in batches_by_rank for row in batches[micro_index]]
            share = balanced_shares(step_rows, cost_lengths, ctx.world_size)[ctx.rank]
            batch = collate([train_pairs[i] for i in share], tokenizer.pad_token_id, ctx.device)
            last_of_epoch = micro_index + 1 == micro_per_epoch
            steps_now = last_of_epoch or (micro_index + 1) % accumulation == 0
            with ctx.gradient_sync(scorer, sync=steps_now):  # all-reduce once per optimizer step
                with ctx.autocast():
                    chosen, rejected = score_pairs(scorer, batch)
                stats = pairwise_loss(chosen.float(), rejected.float(), batch["margin"],
                                      training.center_rewards_coefficient)
                ctx.backward(stats.loss * (len(share) * ctx.world_size / len(step_rows)))
            window.append((stats.metrics(), len(share)))
            if not steps_now:
                continue
            grad_norm = ctx.step(optimizer, scheduler, scorer)
            state.step += 1
            state.batch_in_epoch = micro_index + 1
            train_metrics = pair_weighted_mean(ctx, window)
            train_metrics["grad_norm"] = grad_norm  # the same on every worker after the gradient all-reduce
            train_metrics["lr"] = scheduler.get_last_lr()[0]
            ctx.log(state.step, train_metrics, epoch=epoch)
            window = []
            if ctx.checkpoint_due(state.step) and not last_of_epoch:
                ctx.save(state, train_metrics)
        validation_metrics = evaluate(ctx, scorer, evaluated_pairs, evaluated_lengths, tokenizer.pad_token_id,
                                      training.batch_size)
        ctx.log(state.step, validation_metrics, epoch=epoch, split="validation")
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        ctx.save(state, validation_metrics)

    if validation_metrics is None:  # resumed a finished run: nothing left to train, still report and export
        validation_metrics = evaluate(ctx, scorer, evaluated_pairs, evaluated_lengths, tokenizer.pad_token_id,
                                      training.batch_size)
        ctx.log(state.step, validation_metrics, epoch=state.epoch - 1, split="validation")  # once in metrics.jsonl
    reward_stats = {"mean": validation_metrics["reward_mean"], "std": validation_metrics["reward_std"],
                    "count": int(validation_metrics["pairs"] * 2),
                    "source": "validation" if validation_pairs else "train",
                    "max_length": config.dataset.max_length}
    ctx.export(ctx.export_model(scorer), tokenizer, extra_files={REWARD_STATS_FILE: reward_stats})
    final = {f"validation_{key}": value for key, value in validation_metrics.items()}
    final.update({f"train_{key}": value for key, value in train_metrics.items()})
    final["steps"] = float(state.step)
    return final


def pair_weighted_mean(ctx, window: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Per-pair means of one step's micro-batch metrics over every worker (each micro-batch weighted by its pairs)."""
    keys = list(window[0][0])
    sums = {key: sum(metrics[key] * pairs for metrics, pairs in window) for key in keys}
    totals = ctx.all_reduce_sum({**sums, "pairs": float(sum(pairs for _, pairs in window))})
    return {key: totals[key] / totals["pairs"] for key in keys}


def evaluate(ctx, scorer, pairs: list, lengths: list[tuple[int, int]], pad_token_id: int,
             batch_size: int) -> dict[str, float]:
    """Exact metrics over all ``pairs`` (``TokenizedPair``): each rank scores its own rows, then the sums are
    all-reduced; the length-bias statistics (``length_bias_spearman``, ``longer_wins_accuracy``) rank every
    reward against its reply's length in ``lengths``, gathered from all ranks."""
    from rlhfctl.models.preference import length_bias_metrics, score_all
    from rlhfctl.objectives.rm import metrics_from_sums, pair_sums

    mine = slice(ctx.rank, None, ctx.world_size)
    with ctx.gathered(scorer):  # FSDP: the workers' shares may differ in batches
        rewards = score_all(unwrap_model(scorer), pairs[mine], pad_token_id, batch_size, ctx.device)
    metrics = metrics_from_sums(ctx.all_reduce_sum(pair_sums(rewards)))
    scored = [item for share in ctx.all_gather(list(zip(rewards, lengths[mine]))) for item in share]
    metrics.update(length_bias_metrics([reward for reward, _ in scored], [length for _, length in scored]))
    return metrics


RECIPE = Recipe(stage=STAGE, build_job=build_job, headline_template=HEADLINE)
plan, run = RECIPE.plan, RECIPE.run  # rm.plan(config) -> TrainingPlan, rm.run(config, resume=...) -> RunSummary
