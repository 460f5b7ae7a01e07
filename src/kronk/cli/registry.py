"""`kronk registry login|logout`: credentials for OCI registries (push and pull).

Credentials are checked against the registry before they are stored, in
`<home>/registry-auth.json` (mode 0600, docker's `auths` layout). Without a login, kronk
uses docker's config.json (`docker login`), if it has an entry for the registry.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from kronk.cli.common import CommandError, HomeOption, console, report_errors, resolve_home

app = typer.Typer(help="Log in to OCI registries for `kronk model push` and pull.")


@app.command()
@report_errors
def login(
    registry: Annotated[str, typer.Argument(help="The registry host[:port], e.g. ghcr.io.")],
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="User name (asked when missing).")
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password (or token) from stdin."),
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain HTTP to the registry (a local one).")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Check credentials against a registry, then store them (mode 0600)."""
    from kronk.models.oci.auth import Credentials, save_credentials
    from kronk.models.oci.client import RegistryClient
    from kronk.models.oci.reference import Reference, parse_reference

    host = _host(registry)
    parse_reference(f"{host}/check")  # the same host rules as push and pull
    if username is None:
        username = typer.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True)
    if not username or not password:
        raise CommandError("a user name and a password are both needed")
    kronk_home = resolve_home(home)
    credentials = Credentials(username, password, "the command line")
    with RegistryClient(
        Reference(host, "check", None, None), credentials=credentials, insecure=insecure
    ) as client:
        # Basic registries answer /v2/ only with the right password; token registries
        # send us to their token service, which checks it.
        client.check()
    path = save_credentials(kronk_home, host, username, password)
    console.print(
        f"[green]logged in[/green] to {escape(host)} as {escape(username)} "
        f"(stored in {escape(str(path))}, readable by you only)",
        soft_wrap=True,
    )


@app.command()
@report_errors
def logout(
    registry: Annotated[str, typer.Argument(help="The registry host[:port].")],
    home: HomeOption = None,
) -> None:
    """Forget the credentials kronk stored for a registry."""
    from kronk.models.oci.auth import remove_credentials

    host = _host(registry)
    if not remove_credentials(resolve_home(home), host):
        raise CommandError(f"kronk has no credentials for {host}", hint="kronk registry login")
    console.print(f"logged out of {escape(host)}")


def _host(registry: str) -> str:
    """Accept what people paste: `https://host:5000/`, `oci://host`, or the bare host."""
    text = registry.strip()
    for prefix in ("oci://", "https://", "http://"):
        text = text.removeprefix(prefix)
    return text.split("/", 1)[0]
