"""The estimate's arithmetic: static memory per model, what persists, the peak phase, and the breakdown summing to
the peak (golden values computed by hand from the shape's parameter counts)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rlhfctl.training.activation_memory import PassSettings, kept_activations
from rlhfctl.training.memory import (
    CPU_DRIVER_WORKER_BYTES,
    CPU_RAY_WORKER_BYTES,
    CUDA_CONTEXT_BYTES,
    FSDP_CPU_CHURN_RETAINED,
    LoraSpec,
    MemoryInputs,
    estimate_memory,
)
from rlhfctl.training.stage_workload import ForwardPass, Generation, ModelUse, Phase, StageWorkload, rows_bytes
from rlhfctl.training.model_config import shape_from_config

SHAPE = shape_from_config({"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "intermediate_size": 96})
LM = SHAPE.causal_lm_parameters()  # 189,760
SCORE = SHAPE.classifier_parameters()  # 125,824 (no LM head, a 64 x 1 score head)
SHAPES = {"m": SHAPE}


def sft(rows: int = 4, length: int = 32, data_bytes: int = 0) -> StageWorkload:
    return StageWorkload(
        models=(ModelUse("model", "m", head="lm", trained=True),),
        phases=(Phase("train step", (ForwardPass("model", rows, length, grad=True, loss="token_nll"),)),),
        data_bytes=data_bytes)


def ppo(experiences: int = 4, micro: int = 2, length: int = 48, new_tokens: int = 16) -> StageWorkload:
    def logprobs(role, rows, grad):
        return ForwardPass(role, rows, length, grad=grad, loss="logprobs", response_length=new_tokens)

    return StageWorkload(
        models=(ModelUse("policy", "m", head="lm", trained=True),
                ModelUse("reference", "m", head="lm", trained=False, lora_shares_base_with="policy"),
                ModelUse("reward_model", "m", head="score", trained=False),
                ModelUse("value_model", "m", head="score", trained=True)),
        phases=(Phase("generation", (Generation("policy", experiences, length - new_tokens, new_tokens),),
                      together=False),
                Phase("update", (logprobs("policy", micro, True),
                                 ForwardPass("value_model", micro, length, grad=True, loss="score")))))


def test_full_training_holds_weights_and_two_adam_states_and_a_single_workers_gradients_are_transient():
    estimate = estimate_memory(MemoryInputs(sft(), SHAPES, in_driver=True))
    model = estimate.per_model["model"]
    assert (model.weights, model.gradients, model.optimizer_state) == (4 * LM, 4 * LM, 8 * LM)
    parts = estimate.breakdown
    assert parts.weights == 4 * LM and parts.optimizer_state == 8 * LM
    assert parts.framework_overhead == CPU_DRIVER_WORKER_BYTES
    assert parts.total == estimate.per_worker_peak_bytes  # the breakdown sums to the peak
    # one worker: no DDP bucket, gradients exist only at the end of the backward; here activations are larger
    assert parts.gradients == 0 and parts.activations > 0
    assert estimate.peak_phase == "train step"
    assert (estimate.trainable_parameters, estimate.total_parameters) == (LM, LM)


def test_ddp_on_cpu_keeps_gradient_buckets_and_two_shared_memory_slots():
    estimate = estimate_memory(MemoryInputs(sft(), SHAPES, world_size=2))
    assert estimate.breakdown.gradients == 4 * LM + 2 * 4 * LM
    assert estimate.breakdown.framework_overhead == CPU_RAY_WORKER_BYTES
    on_gpu = estimate_memory(MemoryInputs(sft(data_bytes=10**6), SHAPES, world_size=2, device="cuda"))
    assert on_gpu.breakdown.gradients == 4 * LM  # nccl all-reduces the buckets: no slots
    assert on_gpu.breakdown.framework_overhead == CUDA_CONTEXT_BYTES
    assert on_gpu.breakdown.data == 0  # the rows live in RAM, not on the device


def test_sgd_keeps_no_optimizer_state_and_fsdp_shards_the_static_memory():
    assert estimate_memory(MemoryInputs(sft(), SHAPES, optimizer="SGD")).breakdown.optimizer_state == 0
    sharded = estimate_memory(MemoryInputs(sft(), SHAPES, world_size=4, strategy="fsdp"))
    assert sharded.per_model["model"].weights == 4 * LM // 4
    assert sharded.per_model["model"].optimizer_state == 2 * LM
    # the largest unit FSDP gathers is the 1000 x 64 embedding (or the head): two at a time, plus one unit's
    # full gradients before the reduce-scatter; no DDP bucket, no shared-memory slots
    unit = 1000 * 64
    assert SHAPE.largest_block_parameters() == unit
    on_gpu = estimate_memory(MemoryInputs(sft(), SHAPES, world_size=4, strategy="fsdp", device="cuda"))
    assert on_gpu.breakdown.weights == 4 * LM // 4 + 2 * 4 * unit
    assert on_gpu.breakdown.gradients == 4 * unit
    # on CPU the heap also keeps most of what each step gathers and frees (see the next test)
    assert sharded.breakdown.weights == 4 * LM // 4 + 2 * 4 * unit + int(2 * 4 * LM * FSDP_CPU_CHURN_RETAINED)
    assert sharded.breakdown.gradients == 4 * unit + int(4 * LM * FSDP_CPU_CHURN_RETAINED)
    replicated = estimate_memory(MemoryInputs(sft(), SHAPES, world_size=4))
    assert sharded.per_worker_peak_bytes < replicated.per_worker_peak_bytes


def test_fsdp_on_cpu_keeps_most_of_the_three_model_copies_each_step_gathers_and_frees(monkeypatch):
    # per step: the trained models' full parameters gathered for the forward and again for the backward, and their
    # full gradients before the reduce-scatter; glibc keeps FSDP_CPU_CHURN_RETAINED of it (measured 2.6-3.1x the
    # trained fp32 bytes on 2 CPU workers); nothing of it on GPU, for a frozen model, for LoRA's adapters, or when
    # malloc mmaps blocks of a decoder block's size (and unmaps them when freed)
    def fsdp(**settings):
        return estimate_memory(MemoryInputs(ppo(), SHAPES, world_size=2, strategy="fsdp", **settings))

    assert FSDP_CPU_CHURN_RETAINED == 0.9
    block = 4 * SHAPE.block_parameters
    cases = ((), (("device", "cuda"),), (("lora", LoraSpec(r=4)),), (("mmap_threshold_bytes", block),),
             (("mmap_threshold_bytes", block + 1),))
    kept = {settings: fsdp(**dict(settings)) for settings in cases}
    monkeypatch.setattr("rlhfctl.training.memory.FSDP_CPU_CHURN_RETAINED", 0.0)
    trained = 4 * (LM + SCORE)  # the policy and the value model; the reference and the reward model are frozen
    churned = {(): (int(2 * trained * 0.9), int(trained * 0.9)), (("device", "cuda"),): (0, 0),
               (("lora", LoraSpec(r=4)),): (0, 0), (("mmap_threshold_bytes", block),): (0, 0),
               (("mmap_threshold_bytes", block + 1),): (int(2 * trained * 0.9), int(trained * 0.9))}
    for settings, estimate in kept.items():
        without = fsdp(**dict(settings))
        weights, gradients = churned[settings]
        assert estimate.breakdown.weights - without.breakdown.weights == weights
        assert estimate.breakdown.gradients - without.breakdown.gradients == gradients
        assert estimate.per_worker_peak_bytes - without.per_worker_peak_bytes == weights + gradients


def test_fsdp_generation_holds_the_policys_full_weights_gathered_once():
    estimate = estimate_memory(MemoryInputs(ppo(experiences=64, micro=1), SHAPES, world_size=2, strategy="fsdp",
                                            device="cuda"))
    assert estimate.peak_phase == "generation"
    shards = (4 * LM + 4 * LM + 4 * SCORE + 4 * SCORE) // 2  # policy, reference, reward and value model
    two_units = 2 * 4 * 1000 * 64  # the two largest units FSDP may hold gathered (embedding, LM head)
    assert estimate.breakdown.weights == shards + two_units + 4 * LM // 2  # + the policy's other half, gathered


def test_the_breakdown_is_the_peak_phase_and_every_phase_is_reported():
    estimate = estimate_memory(MemoryInputs(ppo(experiences=64, micro=1), SHAPES, in_driver=True))
    assert estimate.peak_phase == "generation"
    # layers x rows x tokens x (keys + values of 4 heads x 16) x fp32; heap-sized blocks cost 1.8x on CPU
    assert estimate.breakdown.generation_cache == int(2 * 64 * 48 * (2 * 4 * 16) * 4 * 1.8)
    assert set(estimate.phase_peaks) == {"generation", "update"}
    assert estimate.per_worker_peak_bytes == max(estimate.phase_peaks.values()) == estimate.breakdown.total


def test_ppo_holds_four_models_and_trains_two():
    estimate = estimate_memory(MemoryInputs(ppo(), SHAPES, world_size=2))
    assert {role: parts.weights for role, parts in estimate.per_model.items()} == {
        "policy": 4 * LM, "reference": 4 * LM, "reward_model": 4 * SCORE, "value_model": 4 * SCORE}
    assert estimate.trainable_parameters == LM + SCORE
    assert estimate.total_parameters == 2 * LM + 2 * SCORE
    assert estimate.breakdown.optimizer_state == 8 * (LM + SCORE)
    assert estimate.peak_phase == "update"
    update = estimate.per_model
    assert update["policy"].activations > 0 and update["value_model"].activations > 0  # kept together


def test_a_phase_carries_the_gradients_of_an_earlier_backward_of_the_same_step():
    """PPO backwards the policy, then runs the value model's forward and backward: a single worker's policy gradients
    (freed only at the optimizer step) are alive through the value model's phase; DDP's persist anyway."""
    def split(carry: bool) -> StageWorkload:
        workload = ppo()
        value_pass = ForwardPass("value_model", 2, 48, grad=True, loss="score")
        return replace(workload, phases=(
            Phase("update: policy", (workload.phases[1].steps[0],)),
            Phase("update: value model", (value_pass,), gradients_of=("policy",) if carry else ())))

    carried, alone = (estimate_memory(MemoryInputs(split(flag), SHAPES, in_driver=True)) for flag in (True, False))
    assert carried.phase_peaks["update: policy"] == alone.phase_peaks["update: policy"]
    extra = carried.phase_peaks["update: value model"] - alone.phase_peaks["update: value model"]
    assert extra >= 4 * LM  # at least the policy's fp32 gradients (the heap may keep more of them)
    assert extra <= 4 * LM * 2
    ddp = [estimate_memory(MemoryInputs(split(flag), SHAPES, world_size=2)) for flag in (True, False)]
    assert ddp[0].phase_peaks == ddp[1].phase_peaks  # DDP's buckets are counted once, in the static part
    # one model's activations at a time: the split update peaks below the one that keeps both together
    together = estimate_memory(MemoryInputs(ppo(), SHAPES, in_driver=True))
    assert carried.per_worker_peak_bytes < together.per_worker_peak_bytes


def test_lora_trains_adapters_and_a_score_head_and_the_reference_runs_on_the_policys_base():
    lora = LoraSpec(r=8)
    adapters = SHAPE.lora_parameters(8, "all-linear")
    estimate = estimate_memory(MemoryInputs(ppo(), SHAPES, world_size=2, lora=lora))
    models = estimate.per_model
    assert models["policy"].weights == 4 * (LM + adapters) and models["policy"].optimizer_state == 8 * adapters
    assert models["reference"].weights == 0
    assert models["value_model"].gradients == 4 * (adapters + 64)  # adapters + the 64 x 1 score head
    assert estimate.trainable_parameters == 2 * adapters + 64
    assert estimate.total_parameters == LM + adapters + 2 * SCORE + adapters
    full = estimate_memory(MemoryInputs(ppo(), SHAPES, world_size=2))
    assert estimate.per_worker_peak_bytes < full.per_worker_peak_bytes
    listed = estimate_memory(MemoryInputs(ppo(), SHAPES, lora=LoraSpec(8, ("q_proj", "v_proj"))))
    assert listed.trainable_parameters == 2 * SHAPE.lora_parameters(8, ("q_proj", "v_proj")) + 64


def test_sampling_with_merged_adapters_holds_a_copy_of_the_adapted_weights():
    """PPO with LoRA samples from a merged copy of the policy's adapted weights (``models.adapters_merged``): the
    generation phase holds one more copy of every linear LoRA wraps, unless FSDP samples (it merges nothing)."""
    def generation_peak(workload, **inputs):
        return estimate_memory(MemoryInputs(workload, SHAPES, **inputs)).phase_peaks["generation"]

    merging = ppo(experiences=64, micro=1)
    merging = replace(merging, phases=(Phase("generation", (replace(merging.phases[0].steps[0], merges_adapters=True),),
                                             together=False),) + merging.phases[1:])
    adapted = sum(linear.in_features * linear.out_features for linear in SHAPE.lora_linears("all-linear"))
    assert adapted == 2 * (64 * 64 * 2 + 64 * 64 * 2 + 3 * 64 * 96)  # q, k, v, o and the MLP's three, 2 blocks
    lora = LoraSpec(8)
    assert generation_peak(merging, lora=lora) - generation_peak(ppo(experiences=64, micro=1), lora=lora) == 4 * adapted
    assert generation_peak(merging) == generation_peak(ppo(experiences=64, micro=1))  # no LoRA: nothing to merge
    fsdp = {"world_size": 2, "strategy": "fsdp", "lora": lora}
    assert generation_peak(merging, **fsdp) == generation_peak(ppo(experiences=64, micro=1), **fsdp)


def test_gradient_checkpointing_and_smaller_batches_lower_the_peak():
    base = MemoryInputs(sft(rows=8, length=64), SHAPES)
    peak = estimate_memory(base).per_worker_peak_bytes
    assert estimate_memory(replace(base, gradient_checkpointing=True)).per_worker_peak_bytes < peak
    assert estimate_memory(replace(base, workload=sft(rows=2, length=64))).per_worker_peak_bytes < peak


def test_autocast_adds_half_precision_weight_copies_and_shrinks_activations():
    settings = PassSettings(device="cuda", autocast=True)
    fp32 = kept_activations(SHAPE, 4, 32, PassSettings(device="cuda"))
    half = kept_activations(SHAPE, 4, 32, settings, weight_parameters=LM)
    assert half == pytest.approx(fp32 * 0.8 + 2 * LM, abs=2)


def test_the_estimate_as_json():
    data = estimate_memory(MemoryInputs(sft(), SHAPES)).to_dict()
    assert set(data) >= {"per_worker_peak_bytes", "breakdown", "per_model", "peak_phase", "phase_peaks",
                         "trainable_parameters", "total_parameters", "device", "notes"}
    assert set(data["breakdown"]) == {"weights", "gradients", "optimizer_state", "activations", "generation_cache",
                                      "framework_overhead", "data"}
    assert sum(data["breakdown"].values()) == data["per_worker_peak_bytes"]


def test_an_approximate_architecture_is_noted():
    shape = shape_from_config({"model_type": "my_decoder", "vocab_size": 1000, "hidden_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96})
    notes = estimate_memory(MemoryInputs(sft(), {"m": shape})).notes
    assert notes == ("m: model_type 'my_decoder' counted as a Llama-shaped decoder",)


def test_rows_bytes_counts_text_and_token_lists():
    rows = [{"messages": [{"role": "user", "content": "x" * 35}, {"role": "assistant", "content": "y" * 35}]}]
    # 70 + 8 characters ("user", "assistant" count too: 4 + 9 = 13) -> 83 chars, 83 / 3.5 + 1 = 24 tokens
    assert rows_bytes(rows, token_lists_per_row=2, max_length=512) == 600 + 83 + 2 * 24 * 36
    assert rows_bytes(rows, token_lists_per_row=2, max_length=10) == 600 + 83 + 2 * 10 * 36


def test_a_model_that_is_not_resident_weighs_only_in_the_phases_that_use_it():
    """DPO with a separate reference: loaded to score the pairs before training, freed before the first update."""
    def workload(resident: bool) -> StageWorkload:
        return StageWorkload(
            models=(ModelUse("policy", "m", head="lm", trained=True),
                    ModelUse("reference", "m", head="lm", trained=False, resident=resident)),
            phases=(Phase("reference log-probs", (ForwardPass("reference", 4, 32, grad=False, loss="logprobs",
                                                              response_length=16),)),
                    Phase("train step", (ForwardPass("policy", 4, 32, grad=True, loss="logprobs",
                                                     response_length=16),))))

    resident = estimate_memory(MemoryInputs(workload(True), SHAPES, in_driver=True))
    loaded_once = estimate_memory(MemoryInputs(workload(False), SHAPES, in_driver=True))
    assert resident.phase_peaks["train step"] - loaded_once.phase_peaks["train step"] == 4 * LM
    assert resident.phase_peaks["reference log-probs"] == loaded_once.phase_peaks["reference log-probs"]
    assert loaded_once.peak_phase == "train step"
    assert loaded_once.breakdown.total == loaded_once.per_worker_peak_bytes
    assert loaded_once.breakdown.weights == 4 * LM  # the policy's alone at the peak
