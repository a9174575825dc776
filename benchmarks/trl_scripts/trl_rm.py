"""TRL RewardTrainer on the benchmark's RM data, configured for a fair CPU comparison.

bf16 off, gradient checkpointing off, ``use_cpu=True``, ``report_to="none"`` (TRL's GPU-minded defaults make it
~15x slower on CPU); same model folder, data, batch size, max length, epochs, learning rate and schedule as the
rlhfctl run. Writes the step end times so the harness computes the steady-state rate the same way for both tools.
"""

from __future__ import annotations

import time

import _trl_common as common


def main() -> None:
    parser = common.trainer_parser(__doc__)
    parser.add_argument("--validation")
    args = parser.parse_args()

    started = time.perf_counter()
    common.set_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    common.quiet_transformers()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    config = RewardConfig(
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
        **common.CPU_FAIR_ARGS,
        eval_strategy="epoch" if args.validation else "no",
        dataloader_num_workers=0,
    )
    step_end_times: list[float] = []
    trainer = RewardTrainer(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=common.preference_dataset(args.train),
        eval_dataset=common.preference_dataset(args.validation) if args.validation else None,
        callbacks=[common.step_timer_callback(step_end_times)],
    )
    train_rows = len(trainer.train_dataset)
    train_started = time.perf_counter()
    trainer.train()
    train_finished = time.perf_counter()
    metrics = next((entry for entry in reversed(trainer.state.log_history) if "eval_accuracy" in entry), {})
    trainer.save_model(args.out + "/final")
    common.write_result(args.result, {
        "tool": "trl", "trainer": "RewardTrainer",
        "train_rows": train_rows,
        "batch_size": args.batch_size,
        "step_end_times_s": [t - started for t in step_end_times],
        "items_per_step": common.items_per_step(train_rows * args.epochs, args.batch_size, len(step_end_times)),
        "train_time_s": train_finished - train_started,
        "setup_time_s": train_started - started,
        "eval_accuracy": metrics.get("eval_accuracy"),
    })


if __name__ == "__main__":
    main()
