"""GRPO's training-side forwards with each group's prompt computed once (packed) or once per completion (rows).

    python benchmarks/bench_grpo_packing.py [--model tiny|small] [--generations 4] [--prompts 8] [--steps 20]
                                            [--prompt-copies 1] [--response-tokens 32]

In this process, on the harness's kit models and prompts (the ``grpo`` section's: 8 prompts, 32 tokens at
temperature 0.7; ``--prompt-copies N`` repeats each prompt's text N times for longer prompts), every step generates
one batch (``--generations`` completions per prompt) and then times, on that same batch, each training-side phase
both ways, alternating which goes first: the reward model's scores, the reference's log-probs (no grad) and the
update's forward + GRPO loss + backward (the whole batch as one micro-batch, no optimizer step, so both sides see
the same weights). ``group_size`` = G is the packed layout (:func:`rlhfctl.models.packing.pack_groups`), 1 the
rows. Prints min / median ms per phase and side, the largest difference of the log-probs and scores between the
layouts, and the batch's shapes, then one JSON line. Use 2 threads, as the harness's workers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grpo_steps import prompts_for  # noqa: E402
from benchlib import stats, workspace  # noqa: E402
from benchlib.sections.grpo import BETA, PROMPTS_PER_STEP, RESPONSE_LENGTH, TEMPERATURE  # noqa: E402
from benchlib.tools import BENCH_DIR  # noqa: E402

PHASES = ("reward", "reference", "update")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="Kit preset (tiny, small, ...), built once like run.py's.")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=PROMPTS_PER_STEP)
    parser.add_argument("--steps", type=int, default=20, help="Timed steps (after 3 untimed).")
    parser.add_argument("--prompt-copies", type=int, default=1)
    parser.add_argument("--response-tokens", type=int, default=RESPONSE_LENGTH)
    parser.add_argument("--force-packing", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR / "results" / "work")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    from rlhfctl.models.generation import SamplingSettings, generate_responses, tokenize_prompts
    from rlhfctl.models import rollout
    from rlhfctl.models.packing import packing_pays
    from rlhfctl.models.rollout import packs_groups, policy_logprobs, reward_scores
    from rlhfctl.models.scoring import TokenScoreModel
    from rlhfctl.objectives.grpo import grpo_loss

    logging.set_verbosity_error()
    torch.set_num_threads(2)
    work = args.work_dir.resolve()
    data = workspace.write_data(work / "data", rm_pairs=2048)
    model_dir = workspace.build_model(work / "models", args.model, [data.rm_train, data.sft_train])
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(model_dir).train()
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reward_model = TokenScoreModel(AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).eval())
    for model in (policy, reference, reward_model.model):  # as the recipe: no dropout
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    assert packs_groups(policy) and packs_groups(reference)
    if args.force_packing:
        rollout.packing_pays = lambda *shape: True
    rows = prompts_for(work, 1024).read_text(encoding="utf-8").splitlines()[: args.prompts]
    texts = [" ".join([json.loads(row)["prompt"]] * args.prompt_copies) for row in rows]
    ids, mask = tokenize_prompts(texts, tokenizer, 4096)
    sampling = SamplingSettings(args.response_tokens, TEMPERATURE, 0, 1.0, True, (tokenizer.eos_token_id,),
                                tokenizer.pad_token_id)
    group = args.generations
    seconds = {(phase, size): [] for phase in PHASES for size in (group, 1)}
    differences = {"logprobs": 0.0, "scores": 0.0}
    shapes = []

    def timed(phase, size, function):
        started = time.perf_counter()
        result = function()
        seconds[(phase, size)].append(time.perf_counter() - started)
        return result

    for step in range(-3, args.steps):
        torch.manual_seed(max(step, 0))
        with torch.no_grad():
            generation = generate_responses(policy, ids, mask, sampling, repeats=group)
        args_ = (generation.query_responses, generation.attention_mask, generation.prompt_len, TEMPERATURE)
        response_mask = generation.truncated.response_mask
        advantages = torch.randn(response_mask.shape[0])
        shapes.append(list(generation.query_responses.shape))
        order = (group, 1) if step % 2 == 0 else (1, group)
        outputs = {}
        for size in order:
            scores = timed("reward", size, lambda: reward_scores(reward_model, generation, group_size=size))
            with torch.no_grad():
                ref = timed("reference", size, lambda: policy_logprobs(reference, *args_, group_size=size)[0])

            def update():
                logprobs, _ = policy_logprobs(policy, *args_, return_entropy=True, group_size=size)
                result = grpo_loss(logprobs, logprobs.detach(), advantages, response_mask, epsilon=0.2, beta=BETA,
                                   ref_logprobs=ref, aggregation="token", normalizer=float(response_mask.sum()))
                result.loss.backward()
                return logprobs.detach()

            policy.zero_grad(set_to_none=True)
            logprobs = timed("update", size, update)
            outputs[size] = (scores, logprobs * response_mask)
        differences["scores"] = max(differences["scores"], float((outputs[group][0] - outputs[1][0]).abs().max()))
        differences["logprobs"] = max(differences["logprobs"],
                                      float((outputs[group][1] - outputs[1][1]).abs().max()))
        if step < 0:
            for values in seconds.values():
                values.clear()
    summary = {phase: {("packed" if size > 1 else "rows"): {
        "min_ms": round(1000 * min(seconds[(phase, size)]), 2),
        "median_ms": round(1000 * stats.median(seconds[(phase, size)]), 2)} for size in (group, 1)}
        for phase in PHASES}
    for phase, sides in summary.items():
        print(f"{phase:9s} packed {sides['packed']['min_ms']:8.2f} / {sides['packed']['median_ms']:8.2f} ms   "
              f"rows {sides['rows']['min_ms']:8.2f} / {sides['rows']['median_ms']:8.2f} ms (min / median)",
              file=sys.stderr)
    prompt_len = ids.shape[1]
    response_len = stats.median([shape[1] - prompt_len for shape in shapes])
    pays = packing_pays(prompt_len, int(response_len), group, policy.config.hidden_size)
    print(json.dumps({"packing_pays": pays, "forced": args.force_packing, "model": args.model, "generations": group, "prompts": args.prompts, "steps": args.steps,
                      "prompt_len": prompt_len, "prompt_tokens": mask.sum(1).tolist(),
                      "response_len_median": response_len,
                      "max_abs_difference": differences, "phases": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
