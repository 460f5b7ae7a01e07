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
    """Print the versions of kronk, llama-cpp-python and the llama.cpp it was built from."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    import kronk
    from kronk.llama.build_info import ggml_version, llama_cpp_commit

    try:
        binding = dist_version("llama-cpp-python")
    except PackageNotFoundError:
        binding = "not installed"
    commit = llama_cpp_commit() or "unknown commit"
    ggml = ggml_version()
    typer.echo(f"kronk {kronk.__version__}")
    typer.echo(f"llama-cpp-python {binding}")
    typer.echo(f"llama.cpp {commit}" + (f" (ggml {ggml})" if ggml else ""))


def _register() -> None:
    # Imported here, after the root, so each group's module is the only place it is defined.
    from kronk.cli import catalog, libs, models, registry, run, security, server, tools

    app.add_typer(models.app, name="model")
    app.add_typer(catalog.app, name="catalog")
    app.add_typer(server.app, name="server")
    app.add_typer(registry.app, name="registry")
    app.add_typer(security.app, name="security")
    app.add_typer(tools.app, name="tools")
    libs.register(app)
    run.register(app)


_register()

if __name__ == "__main__":
    app()
