"""TRL SFTTrainer on the benchmark's SFT rows (prompt-completion, loss on the completion only, no packing).

Same model folder, rows, batch size, max length, epochs and learning rate as the rlhfctl run; CPU-fair settings.
``--lora-r``/``--lora-alpha``: peft LoRA on all linear layers, as rlhfctl's ``[lora]``; ``--save-merged`` keeps the
result for the held-out evaluation.
"""

from __future__ import annotations

import time

import _trl_common as common


def main() -> None:
    parser = common.trainer_parser(__doc__)
    args = parser.parse_args()

    started = time.perf_counter()
    common.set_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    common.quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    rows = common.load_jsonl(args.train)
    dataset = Dataset.from_list([{"prompt": row["instruction"], "completion": row["response"]} for row in rows])
    config = SFTConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        max_length=args.max_length,
        completion_only_loss=True,
        packing=False,
        **{**common.CPU_FAIR_ARGS, "seed": args.seed},
        dataloader_num_workers=0,
    )
    step_end_times: list[float] = []
    trainer = SFTTrainer(model=model, args=config, processing_class=tokenizer, train_dataset=dataset,
                         callbacks=[common.step_timer_callback(step_end_times)], peft_config=common.peft_config(args))
    train_rows = len(trainer.train_dataset)
    train_started = time.perf_counter()
    trainer.train()
    train_finished = time.perf_counter()
    common.save_merged(trainer.model, tokenizer, args.save_merged)
    common.write_result(args.result, {
        "tool": "trl", "trainer": "SFTTrainer",
        "train_rows": train_rows,
        "step_end_times_s": [t - started for t in step_end_times],
        "items_per_step": common.items_per_step(train_rows * args.epochs, args.batch_size, len(step_end_times)),
        "train_time_s": train_finished - train_started,
        "setup_time_s": train_started - started,
    })


if __name__ == "__main__":
    main()
