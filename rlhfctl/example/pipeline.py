"""The README's end-to-end example: raw example data to PPO, DPO and GRPO policies, then a comparison, on a CPU.

``run_example(workdir)`` runs, in one work folder (default ``./example-run``):

1. the tiny model kit (:mod:`rlhfctl.example.kit`: a BPE tokenizer trained on the example text + a random
   GPT-2-style model) -> ``models/tiny``;
2. ``data convert`` of the raw example files (Alpaca JSON, HH-RLHF transcripts, bare prompt lines) with the very
   function the CLI calls, its reports shown -> ``data/``;
3. ``sft train``, 4. ``rm train``, 5. ``ppo train``, 6. ``dpo train``, 7. ``grpo train`` with
   ``examples/configs/<stage>.toml``, their paths overridden into the work folder (exactly what ``key=value``
   arguments on the command line do): PPO and GRPO start from the SFT export and score with the RM export, DPO
   starts from the SFT export and learns from the RM's preference pairs;
8. the comparison (:mod:`rlhfctl.example.compare`): RM held-out accuracy and the mean RM score of the SFT policy
   vs the PPO, DPO and GRPO policies on held-out prompts, with a few responses side by side (also written to
   ``comparison.json``).

A stage that runs on Ray starts it once for every stage after it (the core reuses an initialised Ray), and it is
shut down at the end; with the example configs' ``num_training_workers = "auto"`` on a machine without GPUs every
stage runs in this process and Ray never starts.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhfctl.errors import UserError
from rlhfctl.example.compare import Comparison
from rlhfctl.fileio import atomic_write_text

MARKER_FILE = ".rlhfctl-example"
KIT_SEED = 0
# Responses sampled per policy for the comparison use PPO's own generation settings from ppo.toml.
COMPARISON_SEED = 1234
TRAINED_STAGES = ("sft", "rm", "ppo", "dpo", "grpo")  # in the order they run (steps 3-7)
POLICY_STAGES = ("ppo", "dpo", "grpo")  # compared with the SFT policy
STEPS = 8
# Which converted data file each stage trains on (data/<name>.jsonl): DPO learns from the RM's pairs, GRPO from
# PPO's prompts.
STAGE_DATA = {"sft": "sft", "rm": "rm", "ppo": "ppo", "dpo": "rm", "grpo": "ppo"}


@dataclass(frozen=True)
class ExamplePaths:
    """Where everything of one example run lives."""

    workdir: Path

    def model_dir(self, name: str) -> Path:
        """``models/<name>``: ``tiny`` (the kit), then each stage's export (``sft``, ``rm``, ``ppo``, ...)."""
        return self.workdir / "models" / name

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def comparison_file(self) -> Path:
        return self.workdir / "comparison.json"

    def run_dir(self, stage: str) -> Path:
        return self.workdir / "runs" / stage

    def data_file(self, name: str) -> Path:
        """``data/<name>.jsonl``: each stage's converted data, and ``heldout_prompts`` for the comparison."""
        return self.data_dir / f"{name}.jsonl"

    def stage_overrides(self, stage: str) -> list[str]:
        """``key=value`` overrides that point a stage's example config into this work folder."""
        common = [f"general.output_dir={self.run_dir(stage)}",
                  f"dataset.train_file={self.data_file(STAGE_DATA[stage])}"]
        tiny, export = self.model_dir("tiny"), self.model_dir(stage)
        if stage in ("sft", "rm"):
            return [f"general.base_model={tiny}", f"general.checkpoint_dir={export}", *common]
        if stage == "dpo":  # the SFT export is the policy to start from and the reference
            return [f"general.base_model={self.model_dir('sft')}", f"general.checkpoint_dir={export}", *common]
        return [  # ppo, grpo
            f"general.model_name={tiny}",
            f"general.model_pretrain={self.model_dir('sft')}",
            f"general.rm_name={tiny}",
            f"general.rm_pretrain={self.model_dir('rm')}",
            f"general.checkpoint_dir={export}",
            f"dataset.validation_file={self.data_file('heldout_prompts')}",
            *common,
        ]


@dataclass(frozen=True)
class RawSource:
    """One raw example file and what ``data convert`` makes of it."""

    raw_name: str  # under examples/data/raw/
    target: str  # "sft" | "rm" | "ppo"
    output_name: str  # under <workdir>/data/


RAW_SOURCES: tuple[RawSource, ...] = (
    RawSource("sft_alpaca.json", "sft", "sft.jsonl"),
    RawSource("rm_hh.jsonl", "rm", "rm.jsonl"),
    RawSource("ppo_prompts.jsonl", "ppo", "ppo.jsonl"),
    RawSource("heldout_prompts.jsonl", "ppo", "heldout_prompts.jsonl"),
)


@dataclass
class ExampleResult:
    """What one example run produced."""

    paths: ExamplePaths
    conversions: list[Any] = field(default_factory=list)  # rlhfctl.data.report.ConvertReport per raw file
    summaries: dict[str, Any] = field(default_factory=dict)  # stage -> rlhfctl.training.job.RunSummary
    stage_seconds: dict[str, float] = field(default_factory=dict)
    comparison: Comparison | None = None
    wall_time_s: float = 0.0


def prepare_workdir(workdir: Path, *, force: bool) -> Path:
    """Create the work folder; refuse to reuse one without ``force``, and never wipe a folder that was not made
    by an earlier example run (it carries a marker file)."""
    workdir = Path(workdir).expanduser().absolute()
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        if not force:
            raise UserError(f"the work folder already exists: {workdir}",
                            hint="Pass --force to start over in it, or choose another --workdir.")
        if not (workdir / MARKER_FILE).is_file():
            raise UserError(
                f"refusing to delete {workdir}: it was not created by `rlhfctl example run` (no {MARKER_FILE} in it)",
                hint="Choose an empty or new --workdir.",
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER_FILE).write_text("created by `rlhfctl example run`; --force may delete this folder\n",
                                       encoding="utf-8")
    return workdir


def run_example(
    workdir: Path | str = Path("example-run"),
    *,
    force: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    examples_dir: Path | None = None,
    extra_overrides: Mapping[str, Sequence[str]] | None = None,
    progress_factory: Callable[[str], Any] | None = None,
) -> ExampleResult:
    """Run the whole example (see the module docstring) and return its figures.

    ``extra_overrides`` maps a stage to more ``key=value`` overrides (tests use it to shorten runs);
    ``progress_factory(stage)`` returns the progress sink of a stage (default: live display, or nothing with
    ``quiet``).
    """
    from rlhfctl.example.kit import example_data_dir
    from rlhfctl.training.ray_cluster import shared_ray_sessions

    started = time.time()
    console = console or Console(highlight=False)
    examples_dir = Path(examples_dir) if examples_dir else example_data_dir().parent
    paths = ExamplePaths(prepare_workdir(Path(workdir), force=force))
    result = ExampleResult(paths=paths)
    extra = {stage: list(values) for stage, values in (extra_overrides or {}).items()}

    def sink_for(stage: str):
        if progress_factory is not None:
            return progress_factory(stage)
        from rlhfctl.progress.render import make_sink

        return make_sink(console, quiet=quiet)

    def timed(name: str, action: Callable[[], Any]) -> Any:
        begin = time.time()
        value = action()
        result.stage_seconds[name] = time.time() - begin
        return value

    _heading(console, 1, "tiny model kit", str(paths.model_dir("tiny")))
    timed("kit", lambda: _build_kit(paths, examples_dir, console))

    _heading(console, 2, "data convert", f"{examples_dir / 'data' / 'raw'} -> {paths.data_dir}")
    result.conversions = timed("convert", lambda: _convert_raw_data(paths, examples_dir, console, quiet))

    configs = {stage: examples_dir / "configs" / f"{stage}.toml" for stage in TRAINED_STAGES}
    ppo_config = None  # its generation settings are the comparison's
    with shared_ray_sessions():  # stages on Ray share one (none starts when every stage runs in this process)
        for number, stage in enumerate(TRAINED_STAGES, start=3):
            config = _load_stage_config(configs[stage], stage, paths.stage_overrides(stage) + extra.get(stage, []))
            _heading(console, number, f"{stage} train",
                     f"rlhfctl {stage} train {configs[stage]} + overrides into {paths.workdir}")
            sink = sink_for(stage)
            try:
                summary = timed(stage, lambda: _train_stage(stage, config, sink))
            finally:
                sink.close()
            result.summaries[stage] = summary
            _stage_line(console, stage, summary)
            if stage == "ppo":
                ppo_config = config

        _heading(console, STEPS, "comparison",
                 "SFT policy vs PPO, DPO and GRPO policies on held-out prompts, scored by the RM")
        result.comparison = timed("compare", lambda: _compare(paths, result.summaries, ppo_config))
    atomic_write_text(paths.comparison_file, json.dumps(result.comparison.to_dict(), indent=2) + "\n")
    result.wall_time_s = time.time() - started
    return result


# ----------------------------------------------------------------------------------------------- steps


def _heading(console: Console, number: int, title: str, detail: str) -> None:
    console.rule(f"[bold]{number}/{STEPS} {title}[/]", align="left")
    console.print(f"[dim]{detail}[/]")


def _build_kit(paths: ExamplePaths, examples_dir: Path, console: Console) -> None:
    from rlhfctl.example.kit import build_model_kit_folder

    corpus = sorted((examples_dir / "data").glob("*.jsonl"))
    summary = build_model_kit_folder(paths.model_dir("tiny"), corpus_files=corpus, preset="tiny", seed=KIT_SEED)
    console.print(f"tokenizer ({summary.vocab_size} tokens, trained on {len(corpus)} example files) and a random "
                  f"GPT-2-style model ({summary.parameters:,} parameters)")


def _convert_raw_data(paths: ExamplePaths, examples_dir: Path, console: Console, quiet: bool) -> list[Any]:
    from rlhfctl.data.convert import ConvertRequest, convert_file

    reports = []
    for source in RAW_SOURCES:
        request = ConvertRequest(input=str(examples_dir / "data" / "raw" / source.raw_name),
                                 output=paths.data_dir / source.output_name, target=source.target)
        report = convert_file(request)
        reports.append(report)
        _show_report(report, console, quiet)
    return reports


def _show_report(report, console: Console, quiet: bool) -> None:
    """The summary `rlhfctl data convert` prints (one line per file with ``quiet``)."""
    if quiet:
        console.print(f"{Path(report.input).name} -> {Path(report.output).name}: {report.rows_written} rows, "
                      f"{report.rows_skipped} skipped")
        return
    console.print(report.to_text(), markup=False)


def _load_stage_config(path: Path, stage: str, overrides: list[str]):
    from rlhfctl.config import load_config

    return load_config(path, stage=stage, overrides=overrides)


def _train_stage(stage: str, config, sink):
    from rlhfctl.recipes.registry import load_recipe

    return load_recipe(stage).run(config, force=True, progress=sink)


def stage_headline(stage: str, metrics: Mapping[str, float]) -> str:
    """The one figure that shows a stage learned (printed after each stage): the recipe's ``headline``."""
    from rlhfctl.recipes.registry import load_recipe

    return load_recipe(stage).headline(metrics)


def _stage_line(console: Console, stage: str, summary) -> None:
    console.print(f"[green]{stage} done[/] in {summary.wall_time_s:.0f} s, {summary.steps} steps: "
                  f"{stage_headline(stage, summary.final_metrics)}")


def _compare(paths: ExamplePaths, summaries: dict[str, Any], ppo_config) -> Comparison:
    from rlhfctl.data.loading import load_rows
    from rlhfctl.example.compare import compare_policies

    prompts = [row["prompt"] for row in load_rows(paths.data_file("heldout_prompts"), "ppo")]
    sft_metrics = summaries["sft"].final_metrics
    return compare_policies(
        sft_dir=paths.model_dir("sft"),
        ppo_dir=paths.model_dir("ppo"),
        rm_dir=paths.model_dir("rm"),
        prompts=prompts,
        rm_accuracy=rm_accuracy(summaries["rm"].final_metrics),
        seed=COMPARISON_SEED,
        max_new_tokens=ppo_config.generation.max_new_tokens,
        temperature=ppo_config.generation.temperature,
        sft_loss_before=sft_metrics.get("validation_initial_loss"),
        sft_loss_after=sft_metrics.get("validation_loss"),
        ppo_kl=ppo_kl(summaries["ppo"].final_metrics),
        more_policies={stage: paths.model_dir(stage) for stage in POLICY_STAGES if stage != "ppo"},
    )


def rm_accuracy(final_metrics: Mapping[str, float]) -> float:
    """The RM's held-out accuracy from its final metrics (``nan`` when it had no validation data)."""
    return float(final_metrics.get("validation_accuracy", float("nan")))


def ppo_kl(final_metrics: Mapping[str, float]) -> float | None:
    """PPO's KL to the reference (the SFT policy) per response: on the held-out prompts, else in training."""
    for key in ("validation_kl_k1", "train_kl_k1"):
        if key in final_metrics:
            return float(final_metrics[key])
    return None
