"""The kronk home folder: the one place everything kronk stores lives.

Where things go (every path below is under the home unless overridden):

=====================  ==============================  ======================================
what                   path                            override
=====================  ==============================  ======================================
home (root)            ``~/.kronk``                    ``KRONK_HOME`` env, ``--home PATH``
models                 ``<home>/models/<id>/<file>``   ``KRONK_MODELS_DIR`` env
model index            ``<models>/.index.yaml``        moves with the models folder
updated catalog        ``<home>/catalog.yaml``         ``kronk catalog update``
chat templates         ``<home>/templates/``
keys (auth)            ``<home>/keys/``  (mode 0700)
rate-limit counters    ``<home>/limits.db``
logs                   ``<home>/logs/``
audit log              ``<home>/logs/audit.log``
runtime (pid files)    ``<home>/run/``
configuration          ``<home>/config.yaml``
=====================  ==============================  ======================================

Precedence: an explicit argument (``--home``, ``KronkHome.resolve(home=...)``) wins over
``KRONK_HOME``, which wins over ``~/.kronk``. The models folder can live elsewhere (for
example on a bigger disk) with ``KRONK_MODELS_DIR``; its index moves with it, because the
index describes the files next to it. docs/home.md says the same for users.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "KRONK_HOME"
MODELS_DIR_ENV = "KRONK_MODELS_DIR"
DEFAULT_HOME = "~/.kronk"

INDEX_FILE_NAME = ".index.yaml"


@dataclass(frozen=True)
class KronkHome:
    """Resolved locations of kronk's files. Build it with `KronkHome.resolve()`."""

    root: Path
    models_dir: Path

    @classmethod
    def resolve(
        cls,
        home: str | Path | None = None,
        *,
        models_dir: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> KronkHome:
        """Work out the home from the argument, then `KRONK_HOME`, then `~/.kronk`.

        `models_dir` (else `KRONK_MODELS_DIR`, else `<home>/models`) places the models
        separately. `environ` defaults to `os.environ`; tests pass their own.
        """
        env = os.environ if environ is None else environ
        root_text = str(home) if home is not None else env.get(HOME_ENV) or DEFAULT_HOME
        root = _absolute(root_text)
        models_text = str(models_dir) if models_dir is not None else env.get(MODELS_DIR_ENV) or None
        return cls(root=root, models_dir=_absolute(models_text) if models_text else root / "models")

    @property
    def catalog_file(self) -> Path:
        """The catalog fetched by `kronk catalog update` (overrides the shipped one)."""
        return self.root / "catalog.yaml"

    @property
    def index_file(self) -> Path:
        """What is verifiably present in the models folder."""
        return self.models_dir / INDEX_FILE_NAME

    @property
    def templates_dir(self) -> Path:
        """Chat templates (Jinja files) that catalog entries or users point at."""
        return self.root / "templates"

    @property
    def keys_dir(self) -> Path:
        """Signing keys and tokens for the server's authentication."""
        return self.root / "keys"

    @property
    def limits_file(self) -> Path:
        """The server's rate-limit counters (SQLite), kept across restarts."""
        return self.root / "limits.db"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def audit_file(self) -> Path:
        """Management actions and refused requests, one JSON object a line."""
        return self.logs_dir / "audit.log"

    @property
    def run_dir(self) -> Path:
        """Runtime state of a running server (pid file, port)."""
        return self.root / "run"

    @property
    def config_file(self) -> Path:
        """The user's own settings; they override catalog defaults."""
        return self.root / "config.yaml"

    def ensure(self) -> KronkHome:
        """Create every folder (idempotent); returns self for chaining."""
        for folder in (self.root, self.models_dir, self.templates_dir, self.logs_dir, self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Keys are secrets: owner-only, also when the folder already existed with looser bits.
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keys_dir.chmod(0o700)
        return self


def _absolute(text: str) -> Path:
    # Absolute now, so a later chdir (a server daemonising) cannot move the home.
    return Path(text).expanduser().absolute()
