"""Current TRL's DPOTrainer on the benchmark's preference pairs, configured for a fair CPU comparison.

bf16 off, gradient checkpointing off, ``use_cpu=True``, ``report_to="none"`` (TRL's GPU-minded defaults make it
~15x slower on CPU); TRL's own defaults otherwise (a reference model forward every step: ``precompute_ref_log_probs``
is off by default). Same model folder, pairs, batch size, max length, epochs, learning rate, schedule, beta and
loss as the rlhfctl run; the held-out pairs are evaluated once at the end. Writes the step end times, so the harness
computes the steady-state rate the same way for both tools, and the held-out implicit-reward accuracy.
"""

from __future__ import annotations

import time

import _trl_common as common


def main() -> None:
    parser = common.trainer_parser(__doc__)
    parser.add_argument("--validation", required=True)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--loss-type", default="sigmoid")
    args = parser.parse_args()

    started = time.perf_counter()
    common.set_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    common.quiet_transformers()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    config = DPOConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=args.max_length,
        beta=args.beta,
        loss_type=[args.loss_type],
        **(common.CPU_FAIR_ARGS | {"seed": args.seed}),  # --seed: the data order (0, the default, as before)
        eval_strategy="no",
        dataloader_num_workers=0,
    )
    step_end_times: list[float] = []
    trainer = DPOTrainer(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=common.preference_dataset(args.train),
        eval_dataset=common.preference_dataset(args.validation),
        callbacks=[common.step_timer_callback(step_end_times)],
    )
    train_rows = len(trainer.train_dataset)
    train_started = time.perf_counter()
    trainer.train()
    train_finished = time.perf_counter()
    metrics = trainer.evaluate()
    trainer.save_model(args.out + "/final")
    common.write_result(args.result, {
        "tool": "trl", "trainer": "DPOTrainer",
        "train_rows": train_rows,
        "batch_size": args.batch_size,
        "step_end_times_s": [t - started for t in step_end_times],
        "items_per_step": common.items_per_step(train_rows * args.epochs, args.batch_size, len(step_end_times)),
        "train_time_s": train_finished - train_started,
        "setup_time_s": train_started - started,
        "heldout_reward_accuracy": metrics.get("eval_rewards/accuracies"),
        "heldout_reward_margin": metrics.get("eval_rewards/margins"),
    })


if __name__ == "__main__":
    main()
