"""The `kronk` command line (typer + rich)."""
