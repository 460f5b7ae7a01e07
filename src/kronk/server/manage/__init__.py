"""The management API (`/manage/...`) the browser UI uses: models, catalog, pulls with
progress, imports, verification, removal, running models, unloading, server info."""

from kronk.server.manage import security as _security  # noqa: F401  (registers its routes)
from kronk.server.manage import server as _server  # noqa: F401  (registers its routes)
from kronk.server.manage.routes import router

__all__ = ["router"]
