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
    from kronk.telemetry.tracing import configure_tracing, otlp_traces_url

    # Spans (downloads, loads, chats) go to a collector when OTEL_* / KRONK_OTLP_* name one.
    configure_tracing(otlp_traces_url())


@app.command()
def version(
    home: HomeOption = None,  # taken by every command; version has no use for it
) -> None:
    """Print kronk's version and the llama-cpp-python it runs on."""
    from importlib.metadata import version as dist_version

    import kronk

    typer.echo(f"kronk {kronk.__version__} (llama-cpp-python {dist_version('llama-cpp-python')})")


def _register() -> None:
    # Imported here, after the root, so each group's module is the only place it is defined.
    from kronk.cli import catalog, libs, models, run, server

    app.add_typer(models.app, name="model")
    app.add_typer(catalog.app, name="catalog")
    app.add_typer(server.app, name="server")
    libs.register(app)
    run.register(app)


_register()

if __name__ == "__main__":
    app()
