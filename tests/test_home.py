"""Where kronk keeps its files: the home folder and its overrides."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kronk.home import KronkHome


def all_locations(home: KronkHome) -> dict[str, Path]:
    return {
        "models_dir": home.models_dir,
        "index_file": home.index_file,
        "catalog_file": home.catalog_file,
        "templates_dir": home.templates_dir,
        "keys_dir": home.keys_dir,
        "logs_dir": home.logs_dir,
        "run_dir": home.run_dir,
        "config_file": home.config_file,
    }


def test_default_home_is_dot_kronk_in_the_user_folder() -> None:
    home = KronkHome.resolve(environ={})

    assert home.root == Path("~/.kronk").expanduser()
    assert home.models_dir == home.root / "models"
    assert home.index_file == home.root / "models" / ".index.yaml"
    assert home.catalog_file == home.root / "catalog.yaml"
    assert home.config_file == home.root / "config.yaml"


def test_kronk_home_moves_every_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONK_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("KRONK_MODELS_DIR", raising=False)

    home = KronkHome.resolve()

    assert home.root == tmp_path / "elsewhere"
    for name, location in all_locations(home).items():
        assert location.is_relative_to(tmp_path / "elsewhere"), name


def test_explicit_home_wins_over_the_environment(tmp_path: Path) -> None:
    home = KronkHome.resolve(tmp_path / "flag", environ={"KRONK_HOME": str(tmp_path / "env")})

    assert home.root == tmp_path / "flag"
    assert home.models_dir == tmp_path / "flag" / "models"


def test_models_dir_can_live_elsewhere_and_its_index_moves_with_it(tmp_path: Path) -> None:
    env = {"KRONK_HOME": str(tmp_path / "home"), "KRONK_MODELS_DIR": str(tmp_path / "disk2")}

    home = KronkHome.resolve(environ=env)

    assert home.models_dir == tmp_path / "disk2"
    assert home.index_file == tmp_path / "disk2" / ".index.yaml"
    assert home.catalog_file == tmp_path / "home" / "catalog.yaml"
    explicit = KronkHome.resolve(environ=env, models_dir=tmp_path / "disk3")
    assert explicit.models_dir == tmp_path / "disk3"


def test_relative_and_tilde_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert KronkHome.resolve("rel", environ={}).root == tmp_path / "rel"
    assert KronkHome.resolve("~/k", environ={}).root == Path("~/k").expanduser()
    # An empty variable means "not set", not "the current folder".
    assert KronkHome.resolve(environ={"KRONK_HOME": ""}).root == Path("~/.kronk").expanduser()


def test_ensure_creates_the_folders_with_private_keys(tmp_path: Path) -> None:
    home = KronkHome.resolve(tmp_path / "h", environ={})
    home.ensure()
    (home.keys_dir).chmod(0o755)  # loosened by hand: ensure() tightens it again

    assert home.ensure() is home
    for folder in (home.models_dir, home.templates_dir, home.keys_dir, home.logs_dir, home.run_dir):
        assert folder.is_dir()
    assert stat.S_IMODE(home.keys_dir.stat().st_mode) == 0o700
    assert not home.catalog_file.exists()  # files are written by their owners, not ensure()
