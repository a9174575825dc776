"""Current TRL's GRPOTrainer on the benchmark's prompts and reward model, HF generate (no vLLM), CPU-fair.

Same policy and reward model folder, prompts, completions per step (prompts x num_generations), response length,
temperature, beta (k3 KL in the loss), clip range, token-level loss aggregation (TRL's default ``dapo``), group
std scaling (TRL's default ``scale_rewards="group"``), one optimisation pass per generation batch, dropout off.
One episode = one completion. Writes the step end times (the harness computes the steady-state rate the same way
for both tools).
"""

from __future__ import annotations

import time

import _trl_common as common


def main() -> None:
    parser = common.rollout_parser(__doc__)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.04)
    args = parser.parse_args()

    started = time.perf_counter()
    common.set_threads(args.threads)
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    common.quiet_transformers()
    tokenizer, reward_tokenizer, policy, reward_model = common.policy_and_reward_model(args)
    prompts = [row["prompt"] for row in common.load_jsonl(args.prompts)]
    completions_per_step = args.prompts_per_step * args.num_generations
    steps = max(1, args.episodes // completions_per_step)
    config = GRPOConfig(
        output_dir=args.out,
        per_device_train_batch_size=completions_per_step,
        num_generations=args.num_generations,
        max_completion_length=args.response_length,
        temperature=args.temperature,
        beta=args.beta,
        epsilon=0.2,
        num_iterations=1,
        loss_type="dapo",
        scale_rewards="group",
        disable_dropout=True,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        max_steps=steps,
        use_vllm=False,
        **common.CPU_FAIR_ARGS,
    )
    step_end_times: list[float] = []
    trainer = GRPOTrainer(
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
        "tool": "trl", "trainer": "GRPOTrainer (current TRL, HF generate)",
        "step_end_times_s": [t - started for t in step_end_times],
        "items_per_step": [completions_per_step] * len(step_end_times),
        "train_time_s": train_finished - train_started,
        "setup_time_s": train_started - started,
    })


if __name__ == "__main__":
    main()
