"""`kronk security key create|list|delete` and `kronk security token create`.

Keys live in `<home>/keys/` (0600 files in a 0700 folder); the newest signs new tokens and
deleting one revokes every token it signed. The first key also gets an admin token, in
`<home>/keys/admin.token`. `token create` prints the token alone on stdout, so scripts can
capture it (`TOKEN=$(kronk security token create ...)`); everything else goes to stderr.
"""

from __future__ import annotations

from typing import Annotated

import jwt
import typer

from kronk.cli.common import CommandError, HomeOption, err_console, report_errors, resolve_home

app = typer.Typer(help="Signing keys and tokens for the server's authentication.")
key_app = typer.Typer(help="Signing keys: the newest signs; deleting one revokes its tokens.")
token_app = typer.Typer(help="Tokens: which endpoints a caller may use, and how often.")
app.add_typer(key_app, name="key")
app.add_typer(token_app, name="token")

ADMIN_DURATION = "8760h"  # the first key's admin token: a year, then make another


@key_app.command("create")
@report_errors
def key_create(home: HomeOption = None) -> None:
    """Create a signing key (it signs new tokens from now on); prints its id."""
    from kronk.server.security.audit import AuditLog
    from kronk.server.security.keys import ADMIN_TOKEN_FILE, KeyStore, write_secret
    from kronk.server.security.tokens import create_token, parse_duration

    paths = resolve_home(home)
    store = KeyStore(paths.keys_dir)
    first = not store.keys()
    info = store.create()
    audit = AuditLog(paths.audit_file)
    audit.record("key_created", key_id=info.kid, source="cli")
    typer.echo(info.kid)
    err_console.print(f"created signing key {info.kid}")
    if first:
        token = create_token(store, {}, duration_s=parse_duration(ADMIN_DURATION), admin=True)
        path = paths.keys_dir / ADMIN_TOKEN_FILE
        write_secret(path, token.encode() + b"\n")
        audit.record("token_created", key_id=info.kid, admin=True, source="cli")
        err_console.print(f"an admin token (valid {ADMIN_DURATION}) is in {path} (mode 0600)")


@key_app.command("list")
@report_errors
def key_list(home: HomeOption = None) -> None:
    """List the signing keys, oldest first; the last one signs new tokens."""
    from kronk.server.security.keys import KeyStore

    keys = KeyStore(resolve_home(home).keys_dir).keys()
    if not keys:
        err_console.print("no signing keys (kronk security key create)")
        return
    for n, info in enumerate(keys):
        newest = "  (signs new tokens)" if n == len(keys) - 1 else ""
        typer.echo(f"{info.kid}  {info.created:%Y-%m-%d %H:%M:%S} UTC{newest}")


@key_app.command("delete")
@report_errors
def key_delete(
    kid: Annotated[str, typer.Argument(help="The key id (kronk security key list).")],
    home: HomeOption = None,
) -> None:
    """Delete a signing key: every token it signed stops working at once."""
    from kronk.server.security.audit import AuditLog
    from kronk.server.security.keys import KeyStore, forget_admin_token

    paths = resolve_home(home)
    if not KeyStore(paths.keys_dir).delete(kid):
        raise CommandError(f"no signing key {kid!r}", hint="kronk security key list")
    AuditLog(paths.audit_file).record("key_deleted", key_id=kid, source="cli")
    forget_admin_token(paths.keys_dir, kid)
    err_console.print(f"deleted signing key {kid}; the tokens it signed are revoked")


@token_app.command("create")
@report_errors
def token_create(
    endpoints: Annotated[
        str | None,
        typer.Option(
            help="Grants: FAMILY[:COUNT/WINDOW|:unlimited],... e.g. chat:1000/day,embeddings; "
            "families: chat, responses, completions, embeddings, tokenize, models, tools, "
            "manage, metrics; windows: minute, hour, day, month"
        ),
    ] = None,
    duration: Annotated[str, typer.Option(help="How long it is valid: 720h, 30d, 1h30m")] = "720h",
    admin: Annotated[
        bool, typer.Option("--admin", help="Every family, management included (unlimited)")
    ] = False,
    subject: Annotated[
        str, typer.Option(help="A label for the audit log (who holds it); not a secret")
    ] = "",
    home: HomeOption = None,
) -> None:
    """Create a token signed by the newest key; prints the token alone on stdout."""
    from kronk.server.security.audit import AuditLog
    from kronk.server.security.keys import KeyStore
    from kronk.server.security.tokens import (
        create_token,
        describe_grants,
        parse_duration,
        parse_endpoints,
    )

    if endpoints is None and not admin:
        raise CommandError("say what the token may use: --endpoints chat:1000/day,... or --admin")
    grants = parse_endpoints(endpoints) if endpoints else {}
    seconds = parse_duration(duration)
    paths = resolve_home(home)
    store = KeyStore(paths.keys_dir)
    token = create_token(store, grants, duration_s=seconds, admin=admin, subject=subject)
    claims = jwt.decode(token, options={"verify_signature": False})
    AuditLog(paths.audit_file).record(
        "token_created", key_id=jwt.get_unverified_header(token)["kid"], token_id=claims["jti"],
        subject=claims["sub"], admin=admin, grants=describe_grants(grants), source="cli",
    )  # fmt: skip
    typer.echo(token)


__all__ = ["app"]
