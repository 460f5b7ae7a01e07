"""Which models the server can serve: the home folder's model store, plus a GGUF file
named on the command line (`kronk server start --model ./model.gguf`)."""

from __future__ import annotations

from pathlib import Path

from kronk.errors import ConfigError, ModelNotFoundError
from kronk.models.aliases import AliasResolver
from kronk.models.resolver import ModelResolver, ResolvedModel, StaticResolver
from kronk.models.store import ModelStore
from kronk.server.settings import ServerSettings


class ChainResolver:
    """Ask each resolver in turn; the first that knows a name wins."""

    def __init__(self, *resolvers: ModelResolver) -> None:
        self.resolvers = resolvers

    def resolve(self, name: str) -> ResolvedModel:
        first: ModelNotFoundError | None = None
        for resolver in self.resolvers:
            try:
                return resolver.resolve(name)
            except ModelNotFoundError as exc:
                first = first or exc
        raise first or ModelNotFoundError(f"model {name!r} not found", name)

    def available(self) -> list[ResolvedModel]:
        seen: dict[str, ResolvedModel] = {}
        for resolver in self.resolvers:
            for model in resolver.available():
                seen.setdefault(model.id, model)
        return list(seen.values())


def is_model_path(value: str) -> bool:
    """Whether `--model` names a file rather than a model id."""
    return value.lower().endswith(".gguf") or Path(value).expanduser().is_file()


def store_resolver(settings: ServerSettings) -> ModelResolver:
    """The models present in the home folder's model store."""
    return ModelStore(settings.home)


def build_resolver(
    settings: ServerSettings, base: ModelResolver | None = None
) -> tuple[AliasResolver, ServerSettings]:
    """The server's resolver (the store, a `--model` file, the alias map), and
    `settings` with a `--model` path replaced by its id."""
    resolver = base if base is not None else store_resolver(settings)
    if settings.model is not None and is_model_path(settings.model):
        path = Path(settings.model).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"--model {settings.model}: no such file")
        model_id = path.stem
        local = ResolvedModel(id=model_id, path=path, owned_by="local")
        resolver = ChainResolver(StaticResolver({model_id: local}), resolver)
        settings = settings.model_copy(update={"model": model_id})
    return AliasResolver(resolver, settings.aliases), settings


__all__ = ["ChainResolver", "build_resolver", "is_model_path", "store_resolver"]
