"""`kronk`: the root command. Each command group lives in its own module and is
registered here, so this file is the table of contents of the CLI."""

from __future__ import annotations

import typer

from kronk.cli.common import HomeOption

app = typer.Typer(
    name="kronk",
    help="Fast local LLM inference on llama.cpp: models, chat and an OpenAI-compatible server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Fast local LLM inference on llama.cpp: models, chat and an OpenAI-compatible server."""


@app.command()
def version(
    home: HomeOption = None,  # taken by every command; version has no use for it
) -> None:
    """Print kronk's version and the llama-cpp-python it runs on."""
    from importlib.metadata import version as dist_version

    import kronk

    typer.echo(f"kronk {kronk.__version__} (llama-cpp-python {dist_version('llama-cpp-python')})")


def _register() -> None:
    # Imported lazily so `kronk --help` stays fast and a broken group can't hide the others.
    import importlib

    for module, name in (
        ("kronk.cli.models", "model"),
        ("kronk.cli.catalog", "catalog"),
        ("kronk.cli.server", "server"),
    ):
        try:
            group = importlib.import_module(module).app
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # not written yet
        app.add_typer(group, name=name)
    for module in ("kronk.cli.libs", "kronk.cli.run"):
        try:
            importlib.import_module(module).register(app)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register()

if __name__ == "__main__":
    app()
