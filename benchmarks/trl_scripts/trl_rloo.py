"""Current TRL's RLOOTrainer on the benchmark's prompts: context only, a DIFFERENT algorithm from PPO.

RLOO (REINFORCE leave-one-out) has no value model and no GAE; it samples ``num_generations`` completions per
prompt and uses the others' mean reward as the baseline. It is the nearest on-policy trainer TRL still ships, so
its episodes/s tells users what a living TRL trainer does on the same policy, reward model and response length.
"""

from __future__ import annotations

import time

import _trl_common as common


def main() -> None:
    parser = common.rollout_parser(__doc__)
    parser.add_argument("--completions-per-step", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.05)
    args = parser.parse_args()

    started = time.perf_counter()
    common.set_threads(args.threads)
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    common.quiet_transformers()
    tokenizer, reward_tokenizer, policy, reward_model = common.policy_and_reward_model(args)
    prompts = [row["prompt"] for row in common.load_jsonl(args.prompts)]
    steps = max(1, args.episodes // args.completions_per_step)
    config = RLOOConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.completions_per_step,
        num_generations=args.num_generations,
        max_completion_length=args.response_length,
        temperature=args.temperature,
        beta=args.beta,
        learning_rate=args.learning_rate,
        max_steps=steps,
        **common.CPU_FAIR_ARGS,
    )
    step_end_times: list[float] = []
    trainer = RLOOTrainer(
        model=policy,
        reward_funcs=reward_model,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
        callbacks=[common.step_timer_callback(step_end_times)],
    )
    train_started = time.perf_counter()
    trainer.train()
    train_finished = time.perf_counter()
    common.write_result(args.result, {
        "tool": "trl", "trainer": "RLOOTrainer (current TRL, different algorithm)",
        "step_end_times_s": [t - started for t in step_end_times],
        "items_per_step": [args.completions_per_step] * len(step_end_times),
        "train_time_s": train_finished - train_started,
        "setup_time_s": train_started - started,
    })


if __name__ == "__main__":
    main()
