"""DPO: train the policy directly on preference pairs against a frozen reference model, no reward model.

Supports: any ``AutoModelForCausalLM``-loadable policy (usually the SFT export), a reference that is the policy
before training (default; with ``[lora]`` the policy with its adapters off) or another model
(``general.ref_model``), the ``sigmoid`` (DPO, with cDPO label smoothing), ``ipo`` and ``hinge`` losses, prompts as
text or message lists, gradient accumulation, clipping, mixed precision, LoRA and gradient checkpointing, several
workers, resume. Data: the RM pair format (``rlhfctl data convert --to rm``).

Recipe, top to bottom:
    driver:  build_job  -> load + validate the pairs (before Ray), count steps            (plan / run call it)
    worker:  train_loop -> tokenizer, policy (dropout off), tokenized pairs
                           -> reference log-probs of every pair, ONCE, before training: each worker computes a
                              share, then every worker holds all (the policy itself when it is the reference, else
                              the reference model, loaded, used and freed): no reference model while training
                           -> optimizer, scheduler -> restore
                           -> per epoch: length-bucketed batches re-cut into even-cost shares, chosen + rejected
                              in ONE forward (packed behind their shared prompt where the model allows,
                              :mod:`rlhfctl.models.pair_logprobs`), the loss (:mod:`rlhfctl.objectives.dpo`)
                           -> validation every epoch (TRL's metric names) -> checkpoint -> export (HF format)
Texts are ``format_prompt(prompt) + response + EOS``; a pair longer than ``dataset.max_length`` loses tokens from
the **left of the prompt** (as in RM training), so whole responses are compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from rlhfctl.config.schema import DPOConfig
from rlhfctl.data.loading import TrainingData, load_training_data
from rlhfctl.errors import DataError
from rlhfctl.models.preflight import AdaptedModel, check_model_settings
from rlhfctl.recipes.registry import Recipe
from rlhfctl.training.batching import (
    balanced_shares,
    length_bucketed_batches,
    micro_batches_per_epoch,
    steps_per_epoch,
)
from rlhfctl.training.checkpoint import TrainState, unwrap_model
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.optim import build_optimizer, build_scheduler
from rlhfctl.training.stage_workload import (CHARS_PER_TOKEN, ForwardPass, ModelUse, Phase, StageWorkload,
                                             rows_bytes)
from rlhfctl.training.worker import LoopConfig, WorkerContext, setup_worker

STAGE = "dpo"
# printed after the stage: final metrics by name, 3 decimals each
HEADLINE = ("held-out reward accuracy {validation_rewards/accuracies}, margin {validation_rewards/margins}, "
            "loss {validation_loss}")


@dataclass(frozen=True)
class DPOPayload:
    """What the driver hands every DPO worker besides the config."""

    train_rows: list[dict]  # {"prompt", "chosen", "rejected", "margin"} rows of the training split
    validation_rows: list[dict]  # the held-out split (empty: validation measures the training pairs)


# ----------------------------------------------------------------------------------------------- driver


def build_job(config: DPOConfig) -> TrainingJob[DPOConfig, DPOPayload]:
    """Load and check the pairs in the driver (errors name file, line and key) and size the run."""
    data = load_training_data(config.dataset, "rm", config.general.seed)
    training = config.training
    workers = training.num_training_workers
    if len(data.train) < workers:
        raise DataError(f"{len(data.train)} training pairs cannot be shared by {workers} workers "
                        "(each needs at least one)", path=data.train_file,
                        hint="Use more pairs or fewer training.num_training_workers.")
    check_model_settings(config, [AdaptedModel("general.base_model", config.general.base_model, "causal")])
    per_epoch = steps_per_epoch(len(data.train), workers, training.batch_size, training.gradient_accumulation_steps)
    loss = f"{training.loss_type}, beta {training.beta:g}"
    if training.label_smoothing:
        loss += f", label smoothing {training.label_smoothing:g}"
    reference = "the policy before training" if config.reference_is_policy else config.reference_source
    return TrainingJob(
        stage=STAGE, config=config, train_loop=train_loop,
        payload=DPOPayload(train_rows=data.train, validation_rows=data.validation),
        total_steps=per_epoch * training.epochs,
        samples_per_step=workers * training.batch_size * training.gradient_accumulation_steps,
        train_rows=len(data.train), validation_rows=len(data.validation), steps_per_epoch=per_epoch,
        plan_notes={"policy": config.general.base_model,
                    "reference": f"{reference} (log-probs computed once per pair, before training)",
                    "loss": loss, "validation": data.validation_source,
                    "max length": f"{config.dataset.max_length} tokens", "unit": "preference pairs"},
        memory=partial(memory_workload, data=data),
    )


def memory_workload(config: DPOConfig, data: TrainingData) -> StageWorkload:
    """The memory hook: the policy alone while training (the reference log-probs are computed once, before
    training); a separate ``ref_model`` is loaded for that pass only. Every pass reads the log-probs of ``batch_size``
    pairs (chosen and rejected: twice as many sequences of up to ``max_length`` tokens, the full-vocabulary logits
    at the response positions): the reference pass and validation without gradients, the train micro-step with."""
    training, length = config.training, config.dataset.max_length
    sequences = 2 * training.batch_size
    response_length = _longest_response_tokens(data, length)

    def logprobs(role: str, grad: bool) -> ForwardPass:
        return ForwardPass(role, sequences, length, grad=grad, loss="logprobs", response_length=response_length)

    models = [ModelUse("policy", config.general.base_model, head="lm", trained=True)]
    reference = "policy"
    if not config.reference_is_policy:
        reference = "reference"
        models.append(ModelUse("reference", config.reference_source, head="lm", trained=False, resident=False))
    return StageWorkload(
        models=tuple(models),
        phases=(Phase("reference log-probs", (logprobs(reference, False),)),
                Phase("train step", (logprobs("policy", True),)),
                Phase("validation", (logprobs("policy", False),))),
        data_bytes=rows_bytes(data.train + data.validation, token_lists_per_row=2, max_length=length),
    )


def _longest_response_tokens(data: TrainingData, max_length: int) -> int:
    """About how many tokens the longest reply has (characters / CHARS_PER_TOKEN), at most ``max_length``."""
    longest = max((len(str(row[key])) for row in data.train + data.validation for key in ("chosen", "rejected")),
                  default=0)
    return max(1, min(max_length, int(longest / CHARS_PER_TOKEN) + 1))


# ----------------------------------------------------------------------------------------------- worker


def train_loop(loop_config: LoopConfig) -> dict[str, float]:
    """Runs on every Ray Train worker (module-level so Ray can pickle it)."""
    from rlhfctl.models.adapters import adapt_for_training
    from rlhfctl.models.loading import disable_dropout, load_model, load_tokenizer, resize_embeddings
    from rlhfctl.models.pair_logprobs import collate_logprob_pairs, make_logprob_model, pair_logprobs
    from rlhfctl.models.preference import pair_cost_lengths, tokenize_pairs
    from rlhfctl.objectives import dpo as dpo_objective

    ctx: WorkerContext[DPOConfig, DPOPayload] = setup_worker(loop_config)
    config, payload = ctx.config, ctx.payload
    training = config.training
    trust = config.general.trust_remote_code

    # Policy and data.
    tokenizer = load_tokenizer(config.general.base_model, trust_remote_code=trust)
    policy = load_model("AutoModelForCausalLM", config.general.base_model, trust_remote_code=trust)
    resize_embeddings(policy, tokenizer)
    disable_dropout(policy)  # before LoRA: lora.dropout stays as configured
    adapt_for_training(policy, config, source=config.general.base_model)  # [lora], gradient checkpointing
    train_pairs = tokenize_pairs(payload.train_rows, tokenizer, config.dataset.max_length)
    validation_pairs = tokenize_pairs(payload.validation_rows, tokenizer, config.dataset.max_length)
    logprob_model = make_logprob_model(policy).to(ctx.device)

    # Reference log-probs, once per pair, before any update (and before a checkpoint's weights are restored).
    reference = _reference_logprobs(ctx, logprob_model, tokenizer, train_pairs + validation_pairs)
    train_reference = _select(reference, range(len(train_pairs)))
    validation_reference = _select(reference, range(len(train_pairs), len(reference.chosen)))

    model = ctx.prepare_model(logprob_model)
    optimizer = build_optimizer(model, training)
    scheduler = build_scheduler(optimizer, training, ctx.total_steps)
    state = TrainState(models={"policy": model}, optimizers={"policy": optimizer}, schedulers={"policy": scheduler})
    ctx.restore(state)

    packed = unwrap_model(model).packs_pairs
    lengths = pair_cost_lengths(train_pairs, packed=False)  # bucketing key: the longer sequence of a pair
    cost_lengths = pair_cost_lengths(train_pairs, packed=packed)
    accumulation = training.gradient_accumulation_steps
    micro_per_epoch = micro_batches_per_epoch(len(train_pairs), ctx.world_size, training.batch_size)
    train_metrics: dict[str, float] = {}
    validation_metrics: dict[str, float] | None = None
    model.train()
    for epoch in range(state.epoch, training.epochs):
        # Every worker's length-bucketed batches (each worker computes all of them, from the seed).
        batches_by_rank = [length_bucketed_batches(ctx.shard(len(train_pairs), epoch, rank=rank), lengths,
                                                   training.batch_size, seed=ctx.seed * 7919 + epoch + 1000 * rank)
                           for rank in range(ctx.world_size)]
        window: dict[str, float] = {}  # metric sums of this optimizer step's micro-batches
        for micro_index in range(state.batch_in_epoch, micro_per_epoch):
            # The workers' batches of this micro-step, re-cut into shares of even padded cost; dividing each
            # share's summed loss by the step's pair count (times the workers DDP averages over) keeps the
            # gradient the mean over every pair of the step.
            step_rows = [row for batches in batches_by_rank for row in batches[micro_index]]
            share = balanced_shares(step_rows, cost_lengths, ctx.world_size)[ctx.rank]
            batch = collate_logprob_pairs([train_pairs[i] for i in share], tokenizer.pad_token_id, ctx.device,
                                          packed=packed)
            last_of_epoch = micro_index + 1 == micro_per_epoch
            steps_now = last_of_epoch or (micro_index + 1) % accumulation == 0
            with ctx.gradient_sync(model, sync=steps_now):  # all-reduce once per optimizer step
                with ctx.autocast():
                    logps = pair_logprobs(model, batch)
                result = dpo_objective.dpo_losses(logps, _select(train_reference, share, ctx.device),
                                                  beta=training.beta, loss_type=training.loss_type,
                                                  label_smoothing=training.label_smoothing)
                ctx.backward(result.losses.sum() * (ctx.world_size / len(step_rows)))
            for key, value in dpo_objective.metric_sums(result, logps).items():
                window[key] = window.get(key, 0.0) + value
            if not steps_now:
                continue
            grad_norm = ctx.step(optimizer, scheduler, model)
            state.step += 1
            state.batch_in_epoch = micro_index + 1
            train_metrics = dpo_objective.metrics_from_sums(ctx.all_reduce_sum(window))
            train_metrics["grad_norm"] = grad_norm  # the same on every worker after the gradient all-reduce
            train_metrics["lr"] = scheduler.get_last_lr()[0]
            ctx.log(state.step, train_metrics, epoch=epoch)
            window = {}
            if ctx.checkpoint_due(state.step) and not last_of_epoch:
                ctx.save(state, train_metrics)
        validation_metrics = evaluate(ctx, model, *_validation_set(train_pairs, train_reference, validation_pairs,
                                                                   validation_reference), tokenizer.pad_token_id)
        ctx.log(state.step, validation_metrics, epoch=epoch, split="validation")
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        ctx.save(state, validation_metrics)

    if validation_metrics is None:  # resumed a finished run: nothing left to train, still report and export
        validation_metrics = evaluate(ctx, model, *_validation_set(train_pairs, train_reference, validation_pairs,
                                                                   validation_reference), tokenizer.pad_token_id)
        ctx.log(state.step, validation_metrics, epoch=state.epoch - 1, split="validation")  # once in metrics.jsonl
    ctx.export(ctx.export_model(model), tokenizer)
    final = {f"validation_{key}": value for key, value in validation_metrics.items()}
    final.update({f"train_{key}": value for key, value in train_metrics.items()})
    final["steps"] = float(state.step)
    return final


def _reference_logprobs(ctx, policy_logprobs, tokenizer, pairs: list):
    """Every pair's reference log-probs (``PreferenceLogps`` of CPU tensors), computed once: each worker scores
    its share (``rank::world_size``), then a sum over workers gives every worker all of them.

    The reference is the policy itself when the config names no other model (this runs before any update or
    restore; with ``[lora]``, the policy with its adapters switched off: its frozen base), else
    ``general.ref_model``, loaded here and freed before training starts.
    """
    import contextlib
    import gc

    import torch

    from rlhfctl.models.adapters import adapters_disabled
    from rlhfctl.models.loading import check_same_vocabulary, disable_dropout, load_model
    from rlhfctl.models.pair_logprobs import all_pair_logprobs, make_logprob_model
    from rlhfctl.objectives.dpo import PreferenceLogps

    config = ctx.config
    reference = policy_logprobs
    if not config.reference_is_policy:
        source = config.reference_source
        loaded = load_model("AutoModelForCausalLM", source, trust_remote_code=config.general.trust_remote_code)
        check_same_vocabulary(tokenizer, loaded, source)
        disable_dropout(loaded)
        reference = make_logprob_model(loaded).to(ctx.device)
    own = list(range(ctx.rank, len(pairs), ctx.world_size))
    base_only = adapters_disabled(policy_logprobs.model) if reference is policy_logprobs else contextlib.nullcontext()
    with base_only:
        scored = all_pair_logprobs(reference, [pairs[i] for i in own], tokenizer.pad_token_id,
                                   config.training.batch_size, ctx.device)
    everything = torch.zeros((4, len(pairs)), dtype=torch.float32)
    everything[:, own] = torch.stack(list(scored))
    if ctx.distributed:
        import torch.distributed as dist

        everything = everything.to(ctx.device)
        dist.all_reduce(everything, op=dist.ReduceOp.SUM)
        everything = everything.cpu()
    if reference is not policy_logprobs:
        del reference, loaded
        gc.collect()
    return PreferenceLogps(*everything)


def _select(logps, indices, device=None):
    """The pairs at ``indices`` of a ``PreferenceLogps`` (optionally moved to ``device``)."""
    import torch

    index = torch.as_tensor(list(indices), dtype=torch.long)
    return type(logps)(*(part[index] if device is None else part[index].to(device) for part in logps))


def _validation_set(train_pairs, train_reference, validation_pairs, validation_reference):
    """The held-out pairs and their reference log-probs, or the training pairs when nothing is held out."""
    return (validation_pairs, validation_reference) if validation_pairs else (train_pairs, train_reference)


def evaluate(ctx, model, pairs: list, reference, pad_token_id: int) -> dict[str, float]:
    """Exact validation metrics over all ``pairs``: each rank scores its share, the sums are all-reduced."""
    from rlhfctl.models.pair_logprobs import all_pair_logprobs
    from rlhfctl.objectives import dpo as dpo_objective

    training = ctx.config.training
    own = list(range(ctx.rank, len(pairs), ctx.world_size))
    with ctx.gathered(model):  # FSDP: the workers' shares may differ in batches
        logps = all_pair_logprobs(unwrap_model(model), [pairs[i] for i in own], pad_token_id, training.batch_size,
                                  ctx.device)
    result = dpo_objective.dpo_losses(logps, _select(reference, own), beta=training.beta,
                                      loss_type=training.loss_type, label_smoothing=training.label_smoothing)
    return dpo_objective.metrics_from_sums(ctx.all_reduce_sum(dpo_objective.metric_sums(result, logps)))


RECIPE = Recipe(stage=STAGE, build_job=build_job, headline_template=HEADLINE)
plan, run = RECIPE.plan, RECIPE.run  # dpo.plan(config) -> TrainingPlan, dpo.run(config, resume=...) -> RunSummary
