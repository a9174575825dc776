"""`rlhfctl init`: write a commented config from a template, by wizard or from flags.

The wizard asks only what the flags did not answer. Prompting goes through a :class:`Prompter` (questionary at a
terminal; tests pass their own), and with no terminal on stdin nothing is ever asked: ``--defaults`` (or a flag for
every answer) is required.

The questions and the answer flags (``--model``, ``--learning-rate``, ...) come from the config schema
(:func:`rlhfctl.config.wizard.init_flags`): a key marked ``Ask(...)`` in a stage's schema module is asked and
gets a flag, with nothing to edit here. So that ``rlhfctl --help`` does not import the schema, the command's
options are built when ``init`` itself is used (:class:`_OptionsOnFirstUse`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Protocol

import typer
import typer.main
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from rlhfctl.errors import UserError

if TYPE_CHECKING:  # the wizard pulls in the config schema (pydantic): imported when `init` runs, not at --help
    from rlhfctl.config.wizard import InitAnswers, InitFlag, Validator


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


def run_wizard(prompter: Prompter, answers: InitAnswers) -> InitAnswers:
    """Fill every unset answer by asking; answers already set (from flags) are not asked again.

    Accepting the template's value leaves the answer unset, so the template's value (relative to the config's
    folder) is kept as written; typed paths are relative to the current directory.
    """
    from rlhfctl.config.templates import template_defaults

    template = template_defaults(answers.stage)
    for question in answers.questions():
        if answers.values[question.name] is not None:
            continue
        text, default = question.text(template), question.template_value(template)
        if question.value_type is bool:
            answers.values[question.name] = prompter.confirm(text, bool(default))
            continue
        shown = "" if default is None else str(default)
        validate = question.validator()
        reply = prompter.text(text, shown, validate).strip()
        problem = validate(reply) if validate else None
        if problem:
            raise UserError(f"{text} {problem} (got {reply!r})")
        answers.values[question.name] = None if reply in (shown, "") else question.parse(reply)
    return answers


# ------------------------------------------------------------------------------------------------ the command

HELP = "Write a commented TOML config for a stage (wizard, or flags and --defaults)."
EPILOG = (
    "Examples:\n\n"
    "  rlhfctl init\n\n"
    "  rlhfctl init --stage rm --defaults -o rm.toml\n\n"
    "  rlhfctl init --stage ppo --defaults --rm-pretrain checkpoints/rm --kl-coeff 0.1 -o ppo.toml"
)


def init(*, stage: str | None, output: Path | None, defaults: bool, force: bool, list_templates: bool,
         **given: Any) -> None:
    """Write a commented TOML config for a stage: a wizard at a terminal, flags and --defaults anywhere.

    ``given`` holds one value per answer flag (``model``, ``learning_rate``, ...; None when the flag is absent).
    """
    from rlhfctl.config.schema import STAGES
    from rlhfctl.config.wizard import InitAnswers, render_config
    from rlhfctl.fileio import atomic_write_text, refuse_to_clobber

    if list_templates:
        _print_templates()
        return
    interactive = not defaults and stdin_is_terminal()
    if output is not None:
        refuse_to_clobber(output, force=force, what="config file")
    if stage is None:
        if interactive:
            stage = make_prompter().select("Which stage do you want to configure?", list(STAGES), STAGES[0])
        elif defaults:
            stage = STAGES[0]
        else:
            raise UserError("no terminal to ask questions on: pass --stage and --defaults (or a flag for every "
                            "answer)", hint="Example: rlhfctl init --stage rm --defaults -o rm.toml")
    answers = InitAnswers(stage, **given)
    misplaced = answers.not_for_this_stage()
    if misplaced:
        raise UserError(_not_for_this_stage(misplaced, stage))
    output = output or Path(f"{stage}.toml")
    refuse_to_clobber(output, force=force, what="config file")
    missing = answers.missing()
    if missing and interactive:
        answers = run_wizard(make_prompter(), answers)
    elif missing and not defaults:
        flags = {flag.name: flag.declaration for flag in _init_flags()}
        raise UserError(
            "no terminal to ask questions on, and these answers were not given: "
            + ", ".join(flags[name] for name in missing),
            hint="Pass --defaults to take the template's values for them.",
        )
    answers = answers.relative_to(output.expanduser().absolute().parent, Path.cwd())
    text = render_config(answers, shown_as=f"{output} (not written)")
    atomic_write_text(output, text)
    _print_written(output, answers)


def _not_for_this_stage(flags: Sequence[InitFlag], stage: str) -> str:
    """"--kl-coeff only applies to --stage ppo, not sft" (flags grouped by the stages they apply to)."""
    by_stages: dict[tuple[str, ...], list[str]] = {}
    for flag in flags:
        by_stages.setdefault(flag.stages, []).append(flag.declaration)
    parts = [f"{', '.join(names)} only appl{'ies' if len(names) == 1 else 'y'} to --stage {' or '.join(stages)}"
             for stages, names in by_stages.items()]
    return "; ".join(parts) + f", not {stage}"


def _init_flags() -> tuple[InitFlag, ...]:
    from rlhfctl.config.wizard import init_flags

    return init_flags()


def _option(name: str, annotation: Any, *declarations: str, default: Any = None, **settings: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(*declarations, **settings)])


def _init_options() -> list[inspect.Parameter]:
    """``init``'s options: the fixed ones, then one per answer of any stage (from the config schema)."""
    from rlhfctl.config.schema import STAGES

    options = [
        _option("stage", Optional[Literal[STAGES]], "--stage", show_default=False,
                help=f"Stage to configure (asked when left out; {STAGES[0]} with --defaults)."),
        _option("output", Optional[Path], "--output", "-o", help="File to write (default: <stage>.toml).",
                show_default=False),
        _option("defaults", bool, "--defaults", default=False,
                help="Use the template's value for every answer not given as a flag; never prompt."),
        _option("force", bool, "--force", default=False, help="Replace the output file if it exists."),
        _option("list_templates", bool, "--list", default=False, help="Show the templates and exit."),
    ]
    for flag in _init_flags():
        bounds = {} if flag.smallest is None else {"min": flag.smallest}
        options.append(_option(flag.name, Optional[flag.value_type], flag.declaration, help=flag.help,
                               show_default=False, **bounds))
    return options


def _full_init_command() -> TyperCommand:
    """``init`` as Typer builds it from a signature holding every option."""

    def init_with_every_option(**options: Any) -> None:
        init(**options)

    init_with_every_option.__signature__ = inspect.Signature(_init_options())  # type: ignore[attr-defined]
    app = typer.Typer(add_completion=False, rich_markup_mode="rich")
    app.command(help=HELP, epilog=EPILOG)(init_with_every_option)
    return typer.main.get_command(app)  # type: ignore[return-value]


class _OptionsOnFirstUse(TyperCommand):
    """``init``, whose options are built the first time the command is parsed or its help is shown.

    Typer builds every command of the app when it starts, even for ``rlhfctl --help``; ``init``'s answer options
    come from the config schema (pydantic), which ``rlhfctl --help`` must not pay for. This command lists, parses
    and runs through the full one (:func:`_full_init_command`), built on first need.
    """

    def _full(self) -> TyperCommand:
        if "_full_command" not in self.__dict__:
            self._full_command = _full_init_command()
        return self._full_command

    def get_params(self, ctx: typer.Context) -> list[Any]:  # type: ignore[override]
        return self._full().get_params(ctx)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        return self._full().invoke(ctx)


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
    def init_options_built_on_first_use() -> None:  # pragma: no cover - never called: the command runs _full()
        raise AssertionError("init runs through _OptionsOnFirstUse")

    app.command("init", cls=_OptionsOnFirstUse, help=HELP, epilog=EPILOG)(init_options_built_on_first_use)
