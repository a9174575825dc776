"""Supervised fine-tuning (SFT): teach a causal language model to answer like the examples.

The recipe, top to bottom (driver side first, then the loop every Ray Train worker runs):

1. ``build_job(config)``: load and validate the data in the driver (errors name file, line and key before Ray
   starts), split train/validation once from the seed, count the optimizer steps (``plan`` shows it: --dry-run),
   and put the rows in an :class:`SFTPayload`.
2. ``run(config)``: hand that :class:`~rlhfctl.training.job.TrainingJob` to the shared core, which starts or
   joins Ray, runs :func:`train_loop` on ``num_training_workers`` workers, streams progress and returns a summary.
3. ``train_loop`` on each worker: load ``AutoModelForCausalLM`` and the tokenizer from ``general.base_model``;
   tokenise every conversation (chat template when the tokenizer has one, otherwise the plain template; EOS
   appended; loss on response tokens only unless ``training.completion_only_loss = false``; truncation keeps the
   prompt's end and the response's start — see :mod:`rlhfctl.objectives.sft`); length-bucketed batches of this
   worker's shard with dynamic padding; AdamW (or the configured optimizer) with warmup and clipping; gradient
   accumulation; validation loss and perplexity before training and after every epoch; checkpoints at
   ``save_every_steps`` and epoch ends; finally the model and tokenizer are exported in Hugging Face format to
   ``general.checkpoint_dir`` (PPO's ``general.model_pretrain``).

Supported: single- and multi-turn data (the final assistant message is the response, earlier turns are the
prompt), resume from the latest checkpoint (same final metrics as an uninterrupted run on CPU), DDP on CPU
(gloo) or GPU (nccl), bf16/fp16 autocast, LoRA adapters (``[lora]``: exported merged, or as the adapter folder)
and gradient checkpointing (:mod:`rlhfctl.models.adapters`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from rlhfctl.config.schema import SFTConfig
from rlhfctl.data.loading import TrainingData, load_training_data
from rlhfctl.errors import DataError
from rlhfctl.models.preflight import AdaptedModel, check_model_settings
from rlhfctl.recipes.registry import Recipe
from rlhfctl.training import batching
from rlhfctl.training.checkpoint import TrainState, unwrap_model
from rlhfctl.training.job import TrainingJob
from rlhfctl.training.optim import build_optimizer, build_scheduler
from rlhfctl.training.stage_workload import ForwardPass, ModelUse, Phase, StageWorkload, rows_bytes
from rlhfctl.training.worker import LoopConfig, WorkerContext, setup_worker

STAGE = "sft"
# printed after the stage: final metrics by name, 3 decimals each
HEADLINE = ("held-out response loss {validation_initial_loss} -> {validation_loss} "
            "(perplexity {validation_perplexity})")


@dataclass(frozen=True)
class SFTPayload:
    """What the driver hands every SFT worker besides the config."""

    train_rows: list[dict]  # {"messages": [...]} rows of the training split, ending in an assistant message
    validation_rows: list[dict]  # the held-out split (may be empty)
    micro_batches_per_epoch: int  # each worker's micro-batches per epoch: equal on every worker (DDP steps together)


def build_job(config: SFTConfig) -> TrainingJob[SFTConfig, SFTPayload]:
    """Load and check the data in the driver (errors name file, line and key, before Ray starts) and size the run.

    Each worker gets an equal shard of ``len(train) // workers`` rows per epoch, in micro-batches of
    ``batch_size``; ``gradient_accumulation_steps`` micro-batches make one optimizer step.
    """
    data = load_training_data(config.dataset, STAGE, config.general.seed)
    training = config.training
    workers = training.num_training_workers
    if len(data.train) < workers:
        raise DataError(f"{len(data.train)} training rows cannot be shared by {workers} workers "
                        "(each needs at least one)", path=data.train_file,
                        hint="Use more data or fewer training.num_training_workers.")
    check_model_settings(config, [AdaptedModel("general.base_model", config.general.base_model, "causal")])
    micro_batches = batching.micro_batches_per_epoch(len(data.train), workers, training.batch_size)
    per_epoch = batching.steps_per_epoch(len(data.train), workers, training.batch_size,
                                         training.gradient_accumulation_steps)
    return TrainingJob(
        stage=STAGE,
        config=config,
        train_loop=train_loop,
        payload=SFTPayload(train_rows=data.train, validation_rows=data.validation,
                           micro_batches_per_epoch=micro_batches),
        total_steps=per_epoch * training.epochs,
        samples_per_step=workers * training.batch_size * training.gradient_accumulation_steps,
        train_rows=len(data.train),
        validation_rows=len(data.validation),
        steps_per_epoch=per_epoch,
        plan_notes={
            "validation": data.validation_source,
            "loss on": "response tokens only" if training.completion_only_loss else "every token",
            "max length": f"{config.dataset.max_length} tokens (prompt cut from the left, response from the right)",
            "model": config.general.base_model,
        },
        memory=partial(memory_workload, data=data),
    )


def memory_workload(config: SFTConfig, data: TrainingData) -> StageWorkload:
    """The memory hook: one trained causal LM (with its own dropout); a micro-step of ``batch_size`` rows of up to
    ``max_length`` tokens whose cross-entropy reads every position's full-vocabulary logits; validation forwards of
    the same size without gradients."""
    training, length = config.training, config.dataset.max_length
    return StageWorkload(
        models=(ModelUse("model", config.general.base_model, head="lm", trained=True),),
        phases=(
            Phase("train step", (ForwardPass("model", training.batch_size, length, grad=True, loss="token_nll"),)),
            Phase("validation", (ForwardPass("model", training.batch_size, length, grad=False, loss="token_nll"),)),
        ),
        data_bytes=rows_bytes(data.train + data.validation, token_lists_per_row=2, max_length=length),
        keeps_dropout=True,
    )


# ----------------------------------------------------------------------------------------------- worker side


def train_loop(loop_config: LoopConfig) -> dict[str, float]:
    """The loop every Ray Train worker runs (module level, so Ray can pickle it)."""
    ctx: WorkerContext[SFTConfig, SFTPayload] = setup_worker(loop_config)
    config, payload = ctx.config, ctx.payload
    training = config.training

    # -- setup: model, tokenizer, data, optimizer; then the latest checkpoint if there is one
    model, tokenizer = _build_model_and_tokenizer(config, ctx.device)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx.phase(f"tokenising {len(payload.train_rows) + len(payload.validation_rows):,} conversations")
    train_examples = _tokenize(payload.train_rows, tokenizer, config)
    validation_examples = _tokenize(payload.validation_rows, tokenizer, config)
    train_lengths = [len(example.input_ids) for example in train_examples]

    model = ctx.prepare_model(model)
    optimizer = build_optimizer(model, training)
    scheduler = build_scheduler(optimizer, training, ctx.total_steps)
    state = TrainState(models={"model": unwrap_model(model)}, optimizers={"model": optimizer},
                       schedulers={"model": scheduler})
    ctx.restore(state)
    start_epoch, start_batch = state.epoch, state.batch_in_epoch

    def validate() -> dict[str, float]:
        return _validation_metrics(ctx, model, validation_examples, pad_token_id, training.batch_size)

    validation: dict[str, float] = {}
    if state.step == 0 and validation_examples:
        validation = validate()
        ctx.log(0, validation, epoch=0, split="validation")
        state.extra["initial_validation_loss"] = validation["loss"]
    train_metrics: dict[str, float] = {}

    # -- train: accumulation groups of length-bucketed micro-batches; validate and checkpoint every epoch
    accumulation = training.gradient_accumulation_steps
    for epoch in range(start_epoch, training.epochs):
        model.train()
        batches = _epoch_batches(ctx, train_lengths, epoch, training.batch_size,
                                 payload.micro_batches_per_epoch, config.general.seed)
        first = start_batch if epoch == start_epoch else 0
        for group_start in range(first, len(batches), accumulation):
            group = batches[group_start:group_start + accumulation]
            loss_sum, token_count = _accumulate_gradients(ctx, model, group, train_examples, pad_token_id)
            grad_norm = ctx.step(optimizer, scheduler, model)
            state.step += 1
            totals = ctx.all_reduce_sum({"loss_sum": loss_sum, "tokens": token_count})
            train_metrics = {"loss": totals["loss_sum"] / max(totals["tokens"], 1.0),
                             "grad_norm": grad_norm, "learning_rate": scheduler.get_last_lr()[0]}
            ctx.log(state.step, train_metrics, epoch=epoch, split="train")
            state.epoch, state.batch_in_epoch = epoch, group_start + len(group)
            if ctx.checkpoint_due(state.step) and state.batch_in_epoch < len(batches):
                ctx.save(state, train_metrics)
        if validation_examples:
            validation = validate()
            ctx.log(state.step, validation, epoch=epoch, split="validation")
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        ctx.save(state, {**train_metrics, **{f"validation_{key}": value for key, value in validation.items()}})

    if not validation and validation_examples:  # resumed a finished run: nothing trained, still report
        validation = validate()
        ctx.log(state.step, validation, epoch=state.epoch - 1, split="validation")  # once in metrics.jsonl

    # -- export: the Hugging Face folder PPO's general.model_pretrain points at
    ctx.export(ctx.export_model(model), tokenizer)
    final = {f"train_{key}": value for key, value in train_metrics.items() if key != "grad_norm"}
    final.update({f"validation_{key}": value for key, value in validation.items()})
    if "initial_validation_loss" in state.extra:
        final["validation_initial_loss"] = float(state.extra["initial_validation_loss"])
    return final


def _build_model_and_tokenizer(config: SFTConfig, device):
    from rlhfctl.models.adapters import adapt_for_training
    from rlhfctl.models.loading import load_model, load_tokenizer

    general = config.general
    tokenizer = load_tokenizer(general.base_model, trust_remote_code=general.trust_remote_code)
    model = load_model("AutoModelForCausalLM", general.base_model, trust_remote_code=general.trust_remote_code)
    model = adapt_for_training(model, config, source=general.base_model)  # [lora], gradient checkpointing
    return model.to(device), tokenizer


def _tokenize(rows: list[dict], tokenizer, config: SFTConfig) -> list:
    from rlhfctl.models.conversation import tokenize_conversation

    return [
        tokenize_conversation(row["messages"], tokenizer, max_length=config.dataset.max_length,
                              completion_only_loss=config.training.completion_only_loss)
        for row in rows
    ]


def _epoch_batches(ctx, lengths: list[int], epoch: int, batch_size: int, micro_batches: int, seed: int):
    """This worker's micro-batches for ``epoch``: its shard (equal on every worker), length-bucketed."""
    from rlhfctl.training.batching import length_bucketed_batches

    shard = list(ctx.shard(len(lengths), epoch))
    batches = length_bucketed_batches(shard, lengths, batch_size, seed=seed * 100_003 + epoch * 997 + ctx.rank)
    if len(batches) != micro_batches:  # the driver's plan and the worker's shard must agree (DDP steps together)
        raise RuntimeError(f"rank {ctx.rank} has {len(batches)} batches, the plan expected {micro_batches}")
    return batches


def _accumulate_gradients(ctx, model, group, examples, pad_token_id) -> tuple[float, float]:
    """Forward/backward over the micro-batches of one accumulation ``group`` (gradients all-reduced once, on
    the last). Each micro-batch contributes its mean per-token NLL; returns (summed NLL, scored tokens)."""
    from rlhfctl.models.conversation import collate
    from rlhfctl.objectives.sft import masked_token_nll, mean_token_loss

    loss_sum, token_count = 0.0, 0
    for index, batch_indices in enumerate(group):
        batch = collate([examples[i] for i in batch_indices], pad_token_id)
        batch = {key: value.to(ctx.device) for key, value in batch.items()}
        with ctx.gradient_sync(model, sync=index == len(group) - 1):
            with ctx.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).logits  # no KV cache to build: nothing is generated
            token_loss = masked_token_nll(logits, batch["labels"])  # logits (batch, seq, vocab)
            ctx.backward(mean_token_loss(token_loss))
        loss_sum += token_loss.nll_sum.item()
        token_count += int(token_loss.num_tokens.item())
    return loss_sum, float(token_count)


def _validation_metrics(ctx, model, examples, pad_token_id, batch_size) -> dict[str, float]:
    """Held-out response loss (mean NLL per scored token over every worker's share) and perplexity."""
    import torch

    from rlhfctl.models.conversation import collate
    from rlhfctl.objectives.sft import masked_token_nll, perplexity

    model.eval()
    loss_sum, token_count = 0.0, 0
    my_rows = list(range(ctx.rank, len(examples), ctx.world_size))
    with torch.no_grad(), ctx.gathered(model):  # FSDP: the workers' shares may differ in batches
        for start in range(0, len(my_rows), batch_size):
            batch = collate([examples[i] for i in my_rows[start:start + batch_size]], pad_token_id)
            batch = {key: value.to(ctx.device) for key, value in batch.items()}
            with ctx.autocast():
                logits = unwrap_model(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        use_cache=False).logits
            token_loss = masked_token_nll(logits, batch["labels"])
            loss_sum += token_loss.nll_sum.item()
            token_count += int(token_loss.num_tokens.item())
    model.train()
    totals = ctx.all_reduce_sum({"loss_sum": loss_sum, "tokens": float(token_count)})
    loss = totals["loss_sum"] / max(totals["tokens"], 1.0)
    return {"loss": loss, "perplexity": perplexity(loss)}


RECIPE = Recipe(stage=STAGE, build_job=build_job, headline_template=HEADLINE)
plan, run = RECIPE.plan, RECIPE.run  # sft.plan(config) -> TrainingPlan, sft.run(config, resume=...) -> RunSummary
