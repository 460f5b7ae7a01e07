"""`kronk model list|show|pull|push|import|remove|index|verify|ps`: the models of a kronk home.

Every command works on one home (`--home`, else `KRONK_HOME`, else `~/.kronk`) through
`kronk.models.store.ModelStore`; this module only parses arguments and prints.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from kronk.cli.common import (
    CommandError,
    HomeOption,
    JsonOption,
    ProgressBars,
    console,
    human_size,
    open_store,
    print_json,
    print_table,
    report_errors,
)
from kronk.models.store import LocalModel

app = typer.Typer(
    help="Manage local models: pull, import, list, inspect, verify and remove.",
    no_args_is_help=True,
)

DEFAULT_PS_HOST = "127.0.0.1"
PS_TIMEOUT_S = 5.0


# -- list -----------------------------------------------------------------------------------


@app.command("list")
@report_errors
def list_models(json_output: JsonOption = False, home: HomeOption = None) -> None:
    """List the models present in the home (verified when they arrived)."""
    store = open_store(home)
    models = store.list_local()
    if json_output:
        print_json([_local_json(m) for m in models])
        return
    if not models:
        default = store.catalog.default_model_id or "<id|url>"
        console.print(
            f"no models in {escape(str(store.home.models_dir))} yet — try: "
            f"kronk model pull {escape(default)}",
            soft_wrap=True,
        )
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    # Ids and sizes never fold (ids are what the user types next); the rest folds to fit.
    table.add_column("ID", no_wrap=True, min_width=max(len(m.id) for m in models))
    table.add_column("SIZE", no_wrap=True, justify="right")
    table.add_column("CATALOG", overflow="fold")
    table.add_column("CAPABILITIES", overflow="fold")
    # A model's file lies in <models>/<id>/ (named below the table): the file name keeps
    # rows on one line; --json has the full paths.
    table.add_column("FILE", overflow="fold")
    for m in models:
        table.add_row(
            escape(m.id),
            human_size(m.size),
            # "yes" when the id is the catalog's own; a catalog model under another id names it.
            "yes" if m.catalog_id == m.id else escape(m.catalog_id or "-"),
            ", ".join(_capabilities(m)) or "-",
            escape(m.path.name),
        )
    print_table(table)
    console.print(f"[dim]files in {escape(str(store.home.models_dir))}/<id>/[/dim]", soft_wrap=True)


def _capabilities(model: LocalModel) -> list[str]:
    return sorted(model.catalog.capabilities) if model.catalog is not None else []


def _local_json(model: LocalModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "size": model.size,
        "catalog_id": model.catalog_id,
        # null: no catalog entry, so what the model can do is only known once loaded.
        "capabilities": _capabilities(model) if model.catalog is not None else None,
        "path": str(model.path),
        "source": model.source,
        "added": dt.datetime.fromtimestamp(model.added_at, dt.UTC).isoformat(),
        "files": [f.model_dump() for f in model.files],
    }


# -- show -----------------------------------------------------------------------------------


@app.command()
@report_errors
def show(
    model: Annotated[str, typer.Argument(help="A local model id, or a path to a .gguf file.")],
    json_output: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Show a model's GGUF metadata and what it can do.

    Architecture, parameters, quantisation, context length and chat template.
    Capabilities come from the file, and from the catalog where it has an entry.
    """
    local: LocalModel | None = None
    path = Path(model).expanduser()
    if not (path.suffix.lower() == ".gguf" and path.is_file()):
        local = open_store(home).get(model)
        path = local.path
    facts = gguf_facts(path)
    info: dict[str, Any] = {"id": local.id if local else path.stem, "path": str(path), **facts}
    if local is not None:
        info["sha256"] = local.files[0].sha256
        info["catalog_id"] = local.catalog_id
        info["catalog_capabilities"] = _capabilities(local) if local.catalog else None
        info["source"] = local.source
    if json_output:
        print_json(info)
        return
    rows: list[tuple[str, str]] = [
        ("id", info["id"]),
        ("path", info["path"]),
        ("file size", human_size(info["file_size"])),
        ("name", info["name"]),
        ("architecture", info["architecture"]),
        ("parameters", f"{info['parameters_human']} ({info['parameters']:,})"),
        ("quantization", info["quantization"] or "unknown"),
        ("context length", f"{info['context_length']:,} tokens (training)"),
        ("embedding length", str(info["embedding_length"])),
        ("layers", str(info["layers"])),
    ]
    if info["sliding_window"]:
        rows.append(("sliding window", f"{info['sliding_window']} tokens"))
    if info["pooling"]:
        rows.append(("pooling", info["pooling"]))
    template = "yes" if info["chat_template"] else "no"
    if info["chat_template"]:
        template += f" ({info['chat_template_chars']:,} characters)"
    rows += [
        ("chat template", template),
        ("capabilities", ", ".join(info["capabilities"])),
    ]
    if local is not None:
        rows += [
            ("catalog", local.catalog_id or "-"),
            ("sha256", info["sha256"]),
            ("source", local.source or "-"),
        ]
        if local.catalog is not None:
            rows.append(("catalog says", ", ".join(info["catalog_capabilities"]) or "completion"))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, escape(value))
    print_table(table)


def gguf_facts(path: Path) -> dict[str, Any]:
    """What a GGUF file says about itself, read through llama.cpp's loader.

    Loaded memory-mapped on the CPU without repacking, so no weights are read or copied;
    about a second even for large files.
    """
    from gguf.constants import LlamaFileType

    from kronk.chat.template import template_supports_tools
    from kronk.llama import LlamaModel, ModelParams

    model = LlamaModel.load(path, ModelParams(n_gpu_layers=0, repack=False))
    try:
        template = model.chat_template
        file_type = model.meta("general.file_type")
        quantization = None
        if file_type is not None and file_type.isdigit():
            try:
                quantization = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
            except ValueError:
                quantization = f"file type {file_type}"
        if model.is_embedding_only:
            capabilities = ["embedding"]
        else:
            # The same rules the SDK's model_info applies, minus its ChatML fallback:
            # here "chat" means the model ships its own template.
            capabilities = ["completion"]
            if template:
                capabilities.insert(0, "chat")
            if model.vocab.special.has_fim:
                capabilities.append("fim")
            if template and template_supports_tools(template):
                capabilities.append("tools")
            if template and "<think>" in template:
                capabilities.append("reasoning")
        return {
            "file_size": path.stat().st_size,
            "name": model.name,
            "architecture": model.architecture,
            "description": model.description,
            "parameters": model.n_params,
            "parameters_human": _count(model.n_params),
            "quantization": quantization,
            "context_length": model.n_ctx_train,
            "embedding_length": model.n_embd,
            "layers": model.n_layer,
            "sliding_window": model.n_swa,
            "pooling": model.pooling if model.is_embedding_only else None,
            "chat_template": template is not None,
            "chat_template_chars": len(template) if template else 0,
            "capabilities": capabilities,
        }
    finally:
        model.close()


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


# -- pull and import ------------------------------------------------------------------------


InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Plain HTTP to the registry (a local one); env: KRONK_INSECURE_REGISTRIES.",
    ),
]


@app.command()
@report_errors
def pull(
    model: Annotated[
        str,
        typer.Argument(
            help="A catalog id (see `kronk catalog list`), an http(s) URL, or "
            "oci://REGISTRY/REPOSITORY[:TAG]."
        ),
    ],
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", help="Expected sha256 of the file; a mismatch is deleted."),
    ] = None,
    hf_token: Annotated[
        str | None,
        typer.Option(
            "--hf-token",
            help="Hugging Face token for gated repositories (env: HF_TOKEN).",
            show_default=False,
        ),
    ] = None,
    model_id: Annotated[
        str | None,
        typer.Option("--id", help="Local id for a URL or oci:// pull (default: from the name)."),
    ] = None,
    insecure: InsecureOption = False,
    home: HomeOption = None,
) -> None:
    """Download a model, verify its size and sha256, and add it to the index.

    MODEL is a catalog id (see `kronk catalog list`), any http(s) URL of a GGUF file, or
    an OCI registry reference (oci://REGISTRY/REPOSITORY[:TAG], pushed by kronk, Ollama
    or Docker Model Runner). An interrupted pull resumes where it stopped when run again.
    Nothing unverified is ever listed as present.
    """
    from kronk.models.oci import is_oci_reference, pull_model

    store = open_store(home)
    before = {m.id for m in store.list_local()}
    started = time.monotonic()
    with ProgressBars(f"pulling {model}") as bars:
        if is_oci_reference(model):
            local = pull_model(
                store, model, insecure=insecure, sha256=sha256, model_id=model_id, progress=bars
            )
        else:
            local = store.pull(
                model, sha256=sha256, progress=bars, hf_token=hf_token, model_id=model_id
            )
    if local.id in before:
        console.print(
            f"{escape(local.id)} is already here ({human_size(local.size)}, verified when it "
            "arrived; `kronk model verify` checks it again)",
            soft_wrap=True,
        )
    else:
        took = time.monotonic() - started
        console.print(
            f"[green]pulled[/green] {escape(local.id)} ({human_size(local.size)}, "
            f"sha256 {local.files[0].sha256[:12]}…) in {took:.0f} s",
            soft_wrap=True,
        )
    console.print(f"  {escape(str(local.path))}", soft_wrap=True)
    if local.catalog is None or "chat" in local.catalog.capabilities:
        console.print(f"  chat with it: kronk run {escape(local.id)}", soft_wrap=True)


@app.command()
@report_errors
def push(
    model: Annotated[str, typer.Argument(help="A local model id (see `kronk model list`).")],
    target: Annotated[
        str,
        typer.Argument(
            help="REGISTRY/REPOSITORY[:TAG] (oci:// optional), e.g. localhost:5000/library/qwen:q4."
        ),
    ],
    insecure: InsecureOption = False,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="Upload chunk size in bytes.", min=1)
    ] = 16 * 1024 * 1024,
    home: HomeOption = None,
) -> None:
    """Push a local model to an OCI registry, in Ollama's layout.

    The file's sha256 is checked first. Blobs the registry already has are skipped, an
    interrupted upload resumes when run again, and the tag appears only at the end.
    Credentials: `kronk registry login`, or docker's config.json.
    """
    from kronk.models.oci import ModelFacts, push_model

    store = open_store(home)
    local = store.get(model)
    facts = gguf_facts(local.path)
    with ProgressBars(f"pushing {model}") as bars:
        result = push_model(
            store,
            model,
            target,
            insecure=insecure,
            facts=ModelFacts(
                facts["architecture"], facts["parameters_human"], facts["quantization"] or ""
            ),
            # The catalog's word where it has one; otherwise what the file itself says.
            capabilities=None if local.catalog is not None else facts["capabilities"],
            progress=bars,
            chunk_size=chunk_size,
        )
    skipped = f", {len(result.skipped)} blob(s) already there" if result.skipped else ""
    console.print(
        f"[green]pushed[/green] {escape(model)} to {escape(result.reference)} "
        f"(sent {human_size(result.uploaded_bytes)}{skipped}; manifest {result.digest})",
        soft_wrap=True,
    )
    flag = " --insecure" if insecure else ""
    console.print(
        f"  pull it with: kronk model pull oci://{escape(result.reference)}{flag}", soft_wrap=True
    )


@app.command("import")
@report_errors
def import_model(
    path: Annotated[
        Path,
        typer.Argument(help="A .gguf file, or a sentence-transformers BERT folder to convert."),
    ],
    model_id: Annotated[
        str | None, typer.Option("--id", help="Local id (default: from the file name).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Add a local GGUF file, or convert a sentence-transformers folder.

    A GGUF file is checked, then hard-linked (else copied) into the models folder.
    A sentence-transformers BERT folder is converted to GGUF (F16).
    """
    store = open_store(home)
    with ProgressBars(f"importing {path}") as bars:
        local = store.import_path(path, model_id=model_id, progress=bars)
    console.print(
        f"[green]imported[/green] {escape(local.id)} ({human_size(local.size)}, "
        f"sha256 {local.files[0].sha256[:12]}…)",
        soft_wrap=True,
    )
    console.print(f"  {escape(str(local.path))}", soft_wrap=True)


# -- remove ---------------------------------------------------------------------------------


@app.command()
@report_errors
def remove(
    model: Annotated[str, typer.Argument(help="The local model id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    home: HomeOption = None,
) -> None:
    """Delete a local model and its files."""
    store = open_store(home)
    entry = store.index.get(model)
    what = f"{model} ({human_size(entry.size)})" if entry is not None else model
    if not yes and not typer.confirm(f"Remove {what} and its files?", default=False):
        raise CommandError("nothing removed", hint=f"kronk model remove {model} --yes")
    store.remove(model)
    console.print(f"removed {escape(what)}")


# -- index and verify -----------------------------------------------------------------------


@app.command()
@report_errors
def index(json_output: JsonOption = False, home: HomeOption = None) -> None:
    """Rebuild the index from the files on disk (hashes every file).

    Folders without a complete, verifiable model are reported and left out.
    Unfinished downloads are kept, so a pull can resume them.
    """
    store = open_store(home)
    with ProgressBars(transient=True) as bars:
        report = store.rebuild_index(progress=bars.on_hash)
    if json_output:
        print_json(
            {
                "models": [e.id for e in report.models],
                "dropped": [{"folder": f, "reason": why} for f, why in report.dropped],
                "ignored": [str(p) for p in report.ignored],
                "removed": [str(p) for p in report.removed],
            }
        )
        return
    console.print(
        f"indexed {len(report.models)} model(s) in {escape(str(store.home.models_dir))}",
        soft_wrap=True,
    )
    for entry in report.models:
        console.print(f"  [green]✓[/green] {escape(entry.id)} ({human_size(entry.size)})")
    for folder, why in report.dropped:
        console.print(f"  [red]✗[/red] {escape(folder)}: {escape(why)}", soft_wrap=True)
    if report.ignored:
        console.print(
            f"  ignored {len(report.ignored)} partial or temporary file(s) "
            "(an unfinished pull resumes from them)"
        )
    if report.removed:
        console.print(
            f"  deleted {len(report.removed)} temporary file(s) left by an import or "
            "conversion that was killed"
        )


@app.command()
@report_errors
def verify(
    model: Annotated[str | None, typer.Argument(help="One model id (default: all).")] = None,
    json_output: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Re-hash model files and compare them with the index.

    Exits with status 1 if any file is missing or changed; such models leave the index.
    """
    store = open_store(home)
    with ProgressBars(transient=True) as bars:
        results = store.verify(model, progress=bars.on_hash)
    bad = [r for r in results if not r.ok]
    if json_output:
        print_json([{"id": r.id, "ok": r.ok, "problems": r.problems} for r in results])
    else:
        if not results:
            console.print("no models to verify")
        for result in results:
            if result.ok:
                console.print(f"[green]✓[/green] {escape(result.id)}")
            else:
                console.print(f"[red]✗[/red] {escape(result.id)}", soft_wrap=True)
                for problem in result.problems:
                    console.print(f"    {escape(problem)}", soft_wrap=True)
    if bad:
        ids = ", ".join(r.id for r in bad)
        raise CommandError(
            f"{len(bad)} model(s) failed verification and left the index: {ids}",
            hint=f"kronk model pull {bad[0].id}",
        )


# -- ps -------------------------------------------------------------------------------------


@app.command()
@report_errors
def ps(
    host: Annotated[
        str | None, typer.Option(help="Server address (default: as `kronk server start`).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Server port (default: as `kronk server start`).")
    ] = None,
    json_output: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Show the models a running kronk server has loaded.

    The server is found where `kronk server start` puts it: --host/--port, else
    KRONK_HOST/KRONK_PORT, else the home's config.yaml, else 127.0.0.1:11435.
    """
    from kronk.server.settings import ServerSettings

    settings = ServerSettings.load({"home": home, "host": host, "port": port})
    host, port = settings.host, settings.port
    if host in ("0.0.0.0", "::", ""):
        host = DEFAULT_PS_HOST  # a server listening everywhere answers on loopback
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    models = _fetch_ps(f"{base}/api/ps")
    if json_output:
        print_json(models)
        return
    if not models:
        console.print("no models loaded (the server loads a model on its first request)")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    # MEMORY: the estimate the pool loaded it by; RSS: what the load measured; PCACHE: the
    # host prompt cache's bytes in use over its budget.
    columns: tuple[str, ...] = ("NAME", "STATUS", "SLOTS", "QUEUED", "MEMORY", "RSS", "PCACHE")
    columns += ("CONTEXT", "TOK/S")
    columns += ("TTFT", "CACHE", "SPEC")  # SPEC: accepted share of speculative draft tokens
    for column in (*columns, "UNLOADS"):
        table.add_column(column, no_wrap=True)
    now = time.time()
    for m in models:
        status = str(m.get("status", "?"))
        if status == "loading":
            status = f"loading {float(m.get('progress', 0.0)):.0%}"
        expires = m.get("expires_at")
        unloads = "-" if expires is None else _in(float(expires) - now)
        table.add_row(
            escape(str(m.get("name", m.get("id", "?")))),
            status,
            f"{m.get('slots_in_use', 0)}/{m.get('slots', 0)}",
            str(m.get("queued", 0)),
            human_size(m.get("size", m.get("memory_bytes"))),
            human_size(m["memory_measured"]) if m.get("memory_measured") else "-",
            f"{human_size(m.get('prompt_cache_bytes', 0))}/"
            f"{human_size(m.get('prompt_cache_budget', 0))}",
            str(m.get("n_ctx", "-")),
            # Live stats: means over the latest requests; "-" until there are some.
            f"{m['tokens_per_second']:.1f}" if m.get("tokens_per_second") else "-",
            f"{m['time_to_first_token']:.2f} s" if m.get("time_to_first_token") else "-",
            f"{m['prompt_cache_hit_ratio']:.0%}" if m.get("requests_finished") else "-",
            _acceptance(m),
            unloads,
        )
    print_table(table)


def _acceptance(m: dict[str, Any]) -> str:
    """Speculative decoding: the share of draft tokens the model accepted, and how many it
    was given ("-" before any)."""
    drafted = int(m.get("draft_tokens") or 0)
    if not drafted:
        return "-"
    return f"{int(m.get('draft_accepted') or 0) / drafted:.0%} of {drafted}"


def _fetch_ps(url: str) -> list[dict[str, Any]]:
    try:
        response = httpx.get(url, timeout=PS_TIMEOUT_S)
    except httpx.TransportError as exc:
        raise CommandError(
            f"no kronk server answers at {url.removesuffix('/api/ps')} ({type(exc).__name__})",
            hint="kronk server start (or pass --host/--port)",
        ) from None
    if response.status_code != 200:
        raise CommandError(
            f"{url} answered HTTP {response.status_code}",
            hint="kronk server status",
        )
    try:
        models = response.json()["models"]
        if not isinstance(models, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CommandError(
            f"{url} did not answer like a kronk server", hint="kronk server status"
        ) from None
    return [m for m in models if isinstance(m, dict)]


def _in(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    if seconds < 90:
        return f"in {seconds:.0f} s"
    if seconds < 5400:
        return f"in {seconds / 60:.0f} min"
    return f"in {seconds / 3600:.1f} h"
