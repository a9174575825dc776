"""TRL 1.12.0's PPOTrainer (``trl.experimental.ppo``, the last release that has it) on the benchmark's prompts.

Same policy / reward / value models (the value model starts from the reward model, as in rlhfctl), same prompts,
response length, rollouts per update, mini-batches and PPO epochs as the rlhfctl run. TRL reports no time split,
so this script wraps the trainer module's ``batch_generation`` (generate), ``forward`` without gradients and
``get_reward`` (score: reference, value and reward forwards) with timers; train = the rest of each update.
``--lora-r``: TRL's peft path (LoRA on the policy, no reference copy; TRL trains the value model in full).
"""

from __future__ import annotations

import time
from collections import defaultdict

import _trl_common as common


def _install_phase_timers(module, phase_seconds: dict[str, float]):
    import torch

    def timed(function, phase_of_call):
        def wrapper(*args, **kwargs):
            phase = phase_of_call()
            tick = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if phase:
                    phase_seconds[phase] += time.perf_counter() - tick
        return wrapper

    module.batch_generation = timed(module.batch_generation, lambda: "generate")
    module.get_reward = timed(module.get_reward, lambda: "score")
    # ``forward`` runs without gradients for the reference log-probs (scoring) and with them in PPO updates.
    module.forward = timed(module.forward, lambda: None if torch.is_grad_enabled() else "score")


def main() -> None:
    parser = common.rollout_parser(__doc__)
    parser.add_argument("--rollouts-per-update", type=int, default=8)
    parser.add_argument("--num-mini-batches", type=int, default=1)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-prompt-length", type=int, default=96)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    args = parser.parse_args()

    started = time.perf_counter()
    common.set_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import trl.experimental.ppo.ppo_trainer as ppo_module
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    common.quiet_transformers()
    phase_seconds: dict[str, float] = defaultdict(float)
    _install_phase_timers(ppo_module, phase_seconds)

    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    common.ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    prompts = [row["prompt"] for row in common.load_jsonl(args.prompts)]
    encoded = tokenizer(prompts, truncation=True, max_length=args.max_prompt_length)["input_ids"]
    train_dataset = Dataset.from_dict({"input_ids": encoded})
    eval_dataset = Dataset.from_dict({"input_ids": encoded[: args.rollouts_per_update]})

    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    lora = common.peft_config(args)  # with LoRA the reference is the policy with its adapter disabled
    ref_policy = None if lora else AutoModelForCausalLM.from_pretrained(args.policy)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1)
    for model in (reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    config = PPOConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.rollouts_per_update,
        gradient_accumulation_steps=1,
        num_mini_batches=args.num_mini_batches,
        local_rollout_forward_batch_size=args.rollouts_per_update,
        num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.episodes,
        response_length=args.response_length,
        temperature=args.temperature,
        kl_coef=args.kl_coef,
        stop_token="eos",
        learning_rate=args.learning_rate,
        num_sample_generations=0,
        **{**common.CPU_FAIR_ARGS, "seed": args.seed},
    )
    update_end_times: list[float] = []
    phase_marks: list[dict[str, float]] = []

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=[_update_recorder(update_end_times, phase_marks, phase_seconds)],
        peft_config=lora,
    )
    train_started = time.perf_counter()
    trainer.train()
    train_finished = time.perf_counter()
    common.save_merged(trainer.policy_model, tokenizer, args.save_merged)

    # Per-update phase times from the cumulative marks taken at each update end.
    per_update = []
    previous = {"generate": 0.0, "score": 0.0}
    previous_end = train_started
    for end, marks in zip(update_end_times, phase_marks):
        generate = marks["generate"] - previous["generate"]
        score = marks["score"] - previous["score"]
        per_update.append({"generate_s": generate, "score_s": score,
                           "train_s": max(0.0, end - previous_end - generate - score)})
        previous, previous_end = marks, end
    common.write_result(args.result, {
        "tool": "trl", "trainer": "PPOTrainer (trl.experimental.ppo)",
        "rollouts_per_update": args.rollouts_per_update,
        "step_end_times_s": [t - started for t in update_end_times],
        "items_per_step": [args.rollouts_per_update] * len(update_end_times),
        "per_update_phase_s": per_update,
        "train_time_s": train_finished - train_started,
        "setup_time_s": train_started - started,
    })


def _update_recorder(update_end_times: list[float], phase_marks: list[dict[str, float]],
                     phase_seconds: dict[str, float]):
    from transformers import TrainerCallback

    class UpdateRecorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            update_end_times.append(time.perf_counter())
            phase_marks.append({"generate": phase_seconds["generate"], "score": phase_seconds["score"]})

    return UpdateRecorder()


if __name__ == "__main__":
    main()
