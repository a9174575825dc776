"""`rlhfctl init`: write a commented config from a template, by wizard or from flags.

The wizard asks only what the flags did not answer. Prompting goes through a :class:`Prompter` (questionary at a
terminal; tests pass their own), and with no terminal on stdin nothing is ever asked: ``--defaults`` (or a flag for
every answer) is required.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional, Protocol

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlhfctl.errors import UserError

if TYPE_CHECKING:  # the wizard pulls in the config schema (pydantic): imported when `init` runs, not at --help
    from rlhfctl.config.wizard import InitAnswers

Validator = Callable[[str], Optional[str]]  # returns an error message, or None when the text is acceptable


class Prompter(Protocol):
    """Asks one question at a time; returns the answer (raise to cancel)."""

    def select(self, question: str, choices: Sequence[str], default: str) -> str: ...

    def text(self, question: str, default: str, validate: Validator | None = None) -> str: ...

    def confirm(self, question: str, default: bool) -> bool: ...


class QuestionaryPrompter:
    """The terminal wizard (questionary is imported only when a question is asked)."""

    def select(self, question: str, choices: Sequence[str], default: str) -> str:
        import questionary

        return self._answer(questionary.select(question, choices=list(choices), default=default))

    def text(self, question: str, default: str, validate: Validator | None = None) -> str:
        import questionary

        check = (lambda text: validate(text) or True) if validate else None
        return self._answer(questionary.text(question, default=default, validate=check))

    def confirm(self, question: str, default: bool) -> bool:
        import questionary

        return self._answer(questionary.confirm(question, default=default))

    @staticmethod
    def _answer(question):  # type: ignore[no-untyped-def]
        answer = question.ask()
        if answer is None:  # Ctrl-C / Ctrl-D
            raise typer.Abort()
        return answer


def make_prompter() -> Prompter:
    return QuestionaryPrompter()


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


# ------------------------------------------------------------------------------------------------ the wizard


def _positive_int(text: str) -> str | None:
    return None if text.strip().isdigit() and int(text) > 0 else "enter a whole number greater than 0"


def _positive_number(text: str) -> str | None:
    try:
        value = float(text)
    except ValueError:
        return "enter a number, e.g. 1e-5"
    return None if value > 0 and value != float("inf") else "enter a number greater than 0"


def _non_negative_number(text: str) -> str | None:
    try:
        return None if 0 <= float(text) < float("inf") else "enter a number of 0 or more"
    except ValueError:
        return "enter a number, e.g. 0.05"


def _non_empty(text: str) -> str | None:
    return None if text.strip() else "this cannot be empty"


def run_wizard(prompter: Prompter, answers: InitAnswers) -> InitAnswers:
    """Fill every unset answer by asking; answers already set (from flags) are not asked again."""
    from rlhfctl.config.templates import template_defaults

    defaults = template_defaults(answers.stage)
    general, dataset = defaults["general"], defaults["dataset"]
    training, generation = defaults["training"], defaults.get("generation", {})
    ppo = answers.stage == "ppo"

    asked: set[str] = set()

    def ask_text(name: str, question: str, default: object, validate: Validator | None = _non_empty) -> None:
        """Ask for an unset answer. Accepting the template's default leaves the answer unset, so the template's
        value (relative to the config's folder) is kept as written; typed paths are relative to the cwd."""
        if getattr(answers, name) is not None or name in asked:
            return
        asked.add(name)
        reply = prompter.text(question, str(default), validate).strip()
        problem = validate(reply) if validate else None
        if problem:
            raise UserError(f"{question} {problem} (got {reply!r})")
        setattr(answers, name, None if reply in (str(default), "") else reply)

    def ask_number(name: str, question: str, default: object, validate: Validator, kind: type) -> None:
        ask_text(name, question, default, validate)
        if isinstance(getattr(answers, name), str):
            setattr(answers, name, kind(getattr(answers, name)))

    if ppo:
        ask_text("model", "Policy model (hub id or local folder):", general["model_name"])
        ask_text("model_pretrain", "SFT export to start the policy from (empty: none):", "", None)
        ask_text("rm_model", "Reward model architecture (hub id or local folder):", general["rm_name"])
        ask_text("rm_pretrain", "Reward-model export to score with (empty: none):", "", None)
    else:
        ask_text("model", "Model to start from (hub id or local folder):", general["base_model"])
    ask_text("train_file", "Training data file:", dataset["train_file"])
    ask_text("validation_file", f"Validation data file (empty: hold out {dataset['validation_split_percentage']}% "
                                "of the training data):", "", None)
    ask_text("output_dir", "Run directory (logs, metrics, Ray checkpoints):", general["output_dir"])
    ask_text("checkpoint_dir", "Folder for the final exported model:", general["checkpoint_dir"])
    ask_number("workers", "Number of Ray Train workers:", training["num_training_workers"], _positive_int, int)
    ask_number("cpus_per_worker", "CPUs per worker:", training["resources_per_worker"].get("CPU", 1),
               _positive_number, float)
    if answers.use_gpu is None:
        answers.use_gpu = prompter.confirm("Give each worker a GPU?", False)
    ask_number("learning_rate", "Learning rate:", training["learning_rate"], _positive_number, float)
    ask_number("epochs", "Epochs:", training["epochs"], _positive_int, int)
    ask_number("batch_size", "Batch size per worker:", training["batch_size"], _positive_int, int)
    if ppo:
        ask_number("kl_coeff", "KL penalty coefficient (kl_coeff):", training["kl_coeff"], _non_negative_number,
                   float)
        ask_number("max_new_tokens", "Maximum new tokens per response:", generation["max_new_tokens"],
                   _positive_int, int)
    return answers


# ------------------------------------------------------------------------------------------------ the command

_FLAG_NAMES = {
    "model": "--model", "rm_model": "--rm-model", "model_pretrain": "--model-pretrain",
    "rm_pretrain": "--rm-pretrain", "train_file": "--train-file", "validation_file": "--validation-file",
    "output_dir": "--output-dir", "checkpoint_dir": "--checkpoint-dir", "workers": "--workers",
    "cpus_per_worker": "--cpus-per-worker", "use_gpu": "--gpu/--no-gpu", "learning_rate": "--learning-rate",
    "epochs": "--epochs", "batch_size": "--batch-size", "kl_coeff": "--kl-coeff", "max_new_tokens": "--max-new-tokens",
}


def init(
    stage: Annotated[Optional[Literal["sft", "rm", "ppo"]], typer.Option(
        "--stage", help="Stage to configure (asked when left out; sft with --defaults).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="File to write (default: <stage>.toml).", show_default=False)] = None,
    defaults: Annotated[bool, typer.Option("--defaults", help="Use the template's value for every answer not given "
                                                              "as a flag; never prompt.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the output file if it exists.")] = False,
    list_templates: Annotated[bool, typer.Option("--list", help="Show the templates and exit.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Model to start from: hub id or local folder (PPO: the "
                                                      "policy).", show_default=False)] = None,
    rm_model: Annotated[Optional[str], typer.Option(help="PPO: reward model architecture (hub id or folder).",
                                                    show_default=False)] = None,
    model_pretrain: Annotated[Optional[str], typer.Option(help="PPO: SFT export to start the policy from.",
                                                          show_default=False)] = None,
    rm_pretrain: Annotated[Optional[str], typer.Option(help="PPO: reward-model export to score with.",
                                                       show_default=False)] = None,
    train_file: Annotated[Optional[str], typer.Option(help="Training data file.", show_default=False)] = None,
    validation_file: Annotated[Optional[str], typer.Option(help="Validation data file (instead of a split).",
                                                           show_default=False)] = None,
    output_dir: Annotated[Optional[str], typer.Option(help="Run directory (logs, metrics, Ray checkpoints).",
                                                      show_default=False)] = None,
    checkpoint_dir: Annotated[Optional[str], typer.Option(help="Folder for the final exported model.",
                                                          show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Number of Ray Train workers.",
                                                   show_default=False)] = None,
    cpus_per_worker: Annotated[Optional[float], typer.Option(min=0.01, help="CPUs each worker reserves.",
                                                             show_default=False)] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--no-gpu", help="Give each worker one GPU.",
                                                show_default=False)] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Peak learning rate.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Passes over the training data.",
                                                  show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Examples per worker per step.",
                                                      show_default=False)] = None,
    kl_coeff: Annotated[Optional[float], typer.Option(help="PPO: KL penalty coefficient.", show_default=False)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="PPO: response length limit.",
                                                          show_default=False)] = None,
) -> None:
    """Write a commented TOML config for a stage: a wizard at a terminal, flags and --defaults anywhere."""
    from rlhfctl.config.schema import STAGES
    from rlhfctl.config.wizard import PPO_ONLY, InitAnswers

    from rlhfctl.config.wizard import render_config
    from rlhfctl.fileio import atomic_write_text, refuse_to_clobber

    if list_templates:
        _print_templates()
        return
    given = dict(model=model, rm_model=rm_model, model_pretrain=model_pretrain, rm_pretrain=rm_pretrain,
                 train_file=train_file, validation_file=validation_file, output_dir=output_dir,
                 checkpoint_dir=checkpoint_dir, workers=workers, cpus_per_worker=cpus_per_worker, use_gpu=gpu,
                 learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, kl_coeff=kl_coeff,
                 max_new_tokens=max_new_tokens)
    interactive = not defaults and stdin_is_terminal()
    if output is not None:
        refuse_to_clobber(output, force=force, what="config file")
    if stage is None:
        if interactive:
            stage = make_prompter().select("Which stage do you want to configure?", list(STAGES), "sft")
        elif defaults:
            stage = "sft"
        else:
            raise UserError("no terminal to ask questions on: pass --stage and --defaults (or a flag for every "
                            "answer)", hint="Example: rlhfctl init --stage rm --defaults -o rm.toml")
    if stage != "ppo":
        misplaced = [_FLAG_NAMES[name] for name in PPO_ONLY if given[name] is not None]
        if misplaced:
            raise UserError(f"{', '.join(misplaced)} only appl{'ies' if len(misplaced) == 1 else 'y'} to "
                            f"--stage ppo, not {stage}")
    output = output or Path(f"{stage}.toml")
    refuse_to_clobber(output, force=force, what="config file")
    answers = InitAnswers(stage=stage, **given)
    missing = answers.missing()
    if missing and interactive:
        answers = run_wizard(make_prompter(), answers)
    elif missing and not defaults:
        raise UserError(
            "no terminal to ask questions on, and these answers were not given: "
            + ", ".join(_FLAG_NAMES[name] for name in missing),
            hint="Pass --defaults to take the template's values for them.",
        )
    answers = answers.relative_to(output.expanduser().absolute().parent, Path.cwd())
    text = render_config(answers, shown_as=f"{output} (not written)")
    atomic_write_text(output, text)
    _print_written(output, answers)


def _print_templates() -> None:
    from rlhfctl.config.templates import list_templates

    templates = list_templates()
    table = Table(box=None, padding=(0, 2))
    table.add_column("stage")
    # paths are printed whole (people copy them); the description wraps instead
    table.add_column("template", no_wrap=True, min_width=max(len(str(info.path)) for info in templates))
    table.add_column("what it configures")
    for info in templates:
        table.add_row(info.stage, escape(str(info.path)), escape(info.summary))
    Console(highlight=False).print(table)


def _print_written(output: Path, answers: InitAnswers) -> None:
    from rlhfctl.config.loader import load_config
    from rlhfctl.errors import ConfigError

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold green]wrote[/] {escape(str(output))} ({answers.stage} stage)")
    try:
        load_config(output)
    except ConfigError as exc:
        missing = [issue for issue in exc.issues if "not found" in issue.message]
        for issue in missing:
            console.print(f"[yellow]note:[/] {escape(issue.key)}: {escape(issue.message)} (create it before "
                          "training)")
    console.print(f"Next: rlhfctl validate-config {escape(str(output))}")


def register(app: typer.Typer) -> None:
    app.command(
        "init",
        help="Write a commented TOML config for a stage (wizard, or flags and --defaults).",
        epilog=(
            "Examples:\n\n"
            "  rlhfctl init\n\n"
            "  rlhfctl init --stage rm --defaults -o rm.toml\n\n"
            "  rlhfctl init --stage ppo --defaults --rm-pretrain checkpoints/rm --kl-coeff 0.1 -o ppo.toml"
        ),
    )(init)
