"""The SFT stage: planning in the driver, and an end-to-end run on 2 Ray workers with the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhfctl.config import load_config
from rlhfctl.errors import DataError
from rlhfctl.recipes import sft

REPO_ROOT = Path(__file__).resolve().parents[2]
SFT_DATA = REPO_ROOT / "examples" / "data" / "sft.jsonl"


def write_config(tmp_path: Path, model_dir: Path, train_file: Path = SFT_DATA, **training) -> Path:
    options = {"batch_size": 16, "epochs": 4, "learning_rate": 3e-3, "lr_scheduler": "cosine",
               "num_training_workers": 2, **training}
    training_lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())
    path = tmp_path / "sft.toml"
    path.write_text(
        f"""stage = "sft"
[general]
base_model = "{model_dir}"
output_dir = "run"
checkpoint_dir = "export"
seed = 0
[dataset]
train_file = "{train_file}"
validation_split_percentage = 10
max_length = 64
[training]
{training_lines}
resources_per_worker = {{ CPU = 1 }}
""",
        encoding="utf-8",
    )
    return path


def test_plan_counts_equal_steps_for_every_worker(tmp_path, tiny_model_dir):
    config = load_config(write_config(tmp_path, tiny_model_dir, batch_size=16, gradient_accumulation_steps=2))
    job = sft.build_job(config)
    assert (job.train_rows, job.validation_rows) == (360, 40)
    # 360 rows / 2 workers = 180 rows each -> 12 micro-batches of 16 -> 6 optimizer steps per epoch
    assert job.payload.micro_batches_per_epoch == 12
    assert job.steps_per_epoch == 6
    assert job.total_steps == 24
    assert job.samples_per_step == 16 * 2 * 2
    assert job.payload.train_rows[0]["messages"][-1]["role"] == "assistant"
    plan = sft.plan(config)
    assert (plan.workers, plan.total_steps, plan.mode) == (2, 24, "ray")
    assert plan.notes["loss on"] == "response tokens only"


def test_bad_rows_are_reported_before_any_worker_starts(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "response": "hello"}\n{"instruction": "hi"}\n', encoding="utf-8")
    config = load_config(write_config(tmp_path, tiny_model_dir, train_file=bad))
    with pytest.raises(DataError) as caught:
        sft.build_job(config)
    assert caught.value.line == 2 and caught.value.key == "response"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sft_on_two_ray_workers_lowers_heldout_loss_and_exports(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfctl.progress.events import RecordingSink, StepEvent

    config = load_config(write_config(tmp_path, tiny_model_dir))
    sink = RecordingSink()
    summary = sft.run(config, progress=sink)

    metrics = summary.final_metrics
    assert summary.steps == sft.plan(config).total_steps == 4 * 12
    # the held-out response loss falls clearly (random init: ~ln(vocab) = 6.3)
    assert metrics["validation_initial_loss"] > 5.0
    assert metrics["validation_loss"] < 0.5 * metrics["validation_initial_loss"]
    assert metrics["validation_perplexity"] == pytest.approx(math.exp(metrics["validation_loss"]), rel=1e-6)
    validation_events = [e for e in sink.events if isinstance(e, StepEvent) and e.split == "validation"]
    assert [e.step for e in validation_events] == [0, 12, 24, 36, 48]
    losses = [e.metrics["loss"] for e in validation_events]
    assert losses == sorted(losses, reverse=True)
    lines = [json.loads(line) for line in (summary.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert {line["split"] for line in lines} == {"train", "validation"}

    # the export is a plain Hugging Face folder that continues a held-out prompt in the trained style
    tokenizer = AutoTokenizer.from_pretrained(summary.checkpoint_dir)
    model = AutoModelForCausalLM.from_pretrained(summary.checkpoint_dir).eval()
    prompt = "\n\nHuman: How do I paint my phone?\n\nAssistant:"
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply.startswith((" Sure", " Of course", " No", " Ugh", " Figure")), reply


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_after_a_failure_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, tiny_model_dir):
    def config_in(folder: Path):
        folder.mkdir()
        # one worker: the in-process path (no Ray start-up); dropout is on, so RNG state must be restored too
        return load_config(write_config(folder, tiny_model_dir, num_training_workers=1, epochs=2,
                                        save_every_steps=10))

    uninterrupted, resumed = run_interrupted_and_resumed(config_in, tmp_path, after_step=10)

    assert resumed.resumed_from_step == 10
    assert resumed.steps == uninterrupted.steps == 46
    assert set(resumed.final_metrics) == set(uninterrupted.final_metrics)
    for key, value in uninterrupted.final_metrics.items():
        assert resumed.final_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.timeout(300)
def test_lora_with_checkpointing_resumes_exactly_and_exports_the_adapter(tmp_path, tiny_model_dir):
    """In-process: adapters (dropout on, so the RNG matters) + gradient checkpointing, interrupted after a
    checkpoint and resumed, give the uninterrupted run's numbers; the checkpoint and export hold the adapter."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(SFT_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:48]), encoding="utf-8")

    def config_in(folder: Path):
        folder.mkdir()
        path = write_config(folder, tiny_model_dir, rows, num_training_workers=1, epochs=2, batch_size=8,
                            save_every_steps=3, gradient_checkpointing=True)
        path.write_text(path.read_text() + "\n[lora]\nr = 4\ndropout = 0.1\nmerge_on_export = false\n")
        return load_config(path)

    uninterrupted, resumed = run_interrupted_and_resumed(config_in, tmp_path, after_step=3)
    assert resumed.resumed_from_step == 3 and resumed.steps == uninterrupted.steps == 12  # 6 steps per epoch
    for key, value in uninterrupted.final_metrics.items():
        assert resumed.final_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    trainable, total = resumed.parameters
    assert 0 < trainable < total / 10
    checkpoint = sorted((tmp_path / "b" / "run" / "sft_run").glob("checkpoint_*"))[-1]
    assert json.loads((checkpoint / "state.json").read_text())["model_contents"] == {"model": "trainable"}
    export = tmp_path / "b" / "export"
    assert (export / "adapter_config.json").is_file() and not (export / "config.json").exists()
    starts = [json.loads(line) for line in (tmp_path / "b" / "run" / "events.jsonl").read_text().splitlines()]
    assert [(e["trainable_parameters"], e["total_parameters"]) for e in starts if e["kind"] == "start"] == [
        (trainable, total)] * 2


def run_interrupted_and_resumed(config_in, tmp_path: Path, *, after_step: int):
    """The summaries of an uninterrupted run (``config_in(tmp_path / "a")``) and of the same run
    (``tmp_path / "b"``) failed after ``after_step`` and resumed with ``--resume``."""
    from rlhfctl.errors import RuntimeFailure

    uninterrupted = sft.run(config_in(tmp_path / "a"))
    interrupted_config = config_in(tmp_path / "b")
    with pytest.raises(RuntimeFailure, match=f"step {after_step}"):
        sft.run(interrupted_config, fault_injection={"after_step": after_step, "marker": str(tmp_path / "fault"),
                                                     "action": "raise"})
    return uninterrupted, sft.run(interrupted_config, resume=True)
