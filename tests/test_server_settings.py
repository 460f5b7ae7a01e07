"""Server settings precedence: defaults < config file < environment < flags, and the
config file's per-model settings."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from kronk.errors import ConfigError
from kronk.llama.context import KV_CACHE_TYPES
from kronk.pool import load_options
from kronk.server.settings import CacheType, ServerSettings, home_folder


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(text)


def test_defaults(tmp_path: Path) -> None:
    s = ServerSettings.load({"home": tmp_path}, environ={})
    assert (s.host, s.port, s.models_max, s.ttl) == ("127.0.0.1", 11435, 3, 300.0)
    assert s.model is None and s.parallel is None and s.ctx_size is None
    assert s.home == tmp_path
    assert s.pid_file == tmp_path / "run" / "server.pid"
    assert s.log_file == tmp_path / "logs" / "server.log"
    assert s.load_defaults() == {}
    assert s.base_url == "http://127.0.0.1:11435"


def test_each_layer_overrides_the_one_before(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "catalog: {}\nserver:\n  port: 9001\n  parallel: 2\n  ctx-size: 1024\n  ttl: 60\n",
    )
    environ = {"KRONK_PARALLEL": "3", "KRONK_TTL": "30", "KRONK_HOST": "0.0.0.0"}
    s = ServerSettings.load({"home": tmp_path, "ttl": 5.0, "port": None}, environ=environ)
    assert s.port == 9001  # config file (flag given as None = not given)
    assert s.ctx_size == 1024  # config file, dashes allowed
    assert s.parallel == 3  # environment beats the config file
    assert s.host == "0.0.0.0"
    assert s.ttl == 5.0  # the flag beats the environment
    assert s.load_defaults() == {"n_ctx": 1024, "n_seq_max": 3}
    assert s.base_url == "http://127.0.0.1:9001"  # where a local client should connect


def test_home_comes_from_flag_then_environment(tmp_path: Path) -> None:
    env_home = tmp_path / "env-home"
    write_config(env_home, "server:\n  models_max: 7\n")
    s = ServerSettings.load({}, environ={"KRONK_HOME": str(env_home)})
    assert s.home == env_home and s.models_max == 7
    flag_home = tmp_path / "flag-home"
    s = ServerSettings.load({"home": flag_home}, environ={"KRONK_HOME": str(env_home)})
    assert s.home == flag_home and s.models_max == 3
    assert home_folder(None, {}) == Path("~/.kronk").expanduser()


@pytest.mark.parametrize(
    ("config", "environ", "flags", "names"),
    [
        ("", {"KRONK_PORT": "eleven"}, {}, "KRONK_PORT"),
        ("server:\n  port: 70000\n", {}, {}, "server.port"),
        ("", {}, {"models_max": 0}, "--models-max"),
        ("server:\n  prot: 1\n", {}, {}, "unknown server setting 'prot'"),
        ("server: [1, 2]\n", {}, {}, "must be a mapping"),
        ("server:\n  home: /x\n", {}, {}, "home"),
        ("server: {port: [\n", {}, {}, "not valid YAML"),
        ("", {"KRONK_LOG_LEVEL": "loud"}, {}, "KRONK_LOG_LEVEL"),
        ("", {"KRONK_CACHE_TYPE_K": "q3_k"}, {}, "KRONK_CACHE_TYPE_K"),
        ("", {}, {"flash_attn": "maybe"}, "--flash-attn"),
        ("models: [a]\n", {}, {}, "'models' must map model ids"),
        ("models:\n  qwen: 3\n", {}, {}, "models.qwen must be a mapping"),
        ("models:\n  qwen: {cache-type-v: q3_k}\n", {}, {}, "models.qwen.cache_type_v"),
        ("models:\n  qwen: {prallel: 2}\n", {}, {}, "models.qwen.prallel"),
        ("models:\n  qwen: {sampling: {hotness: 1}}\n", {}, {}, "unknown sampling defaults"),
        ("server:\n  models: {}\n", {}, {}, "'models' cannot be set in 'server'"),
    ],
)
def test_bad_values_name_their_source(
    tmp_path: Path, config: str, environ: dict[str, str], flags: dict[str, object], names: str
) -> None:
    write_config(tmp_path, config)
    with pytest.raises(ConfigError, match=names.replace(".", r"\.").replace("[", r"\[")):
        ServerSettings.load({"home": tmp_path, **flags}, environ=environ)


def test_a_yaml_error_is_one_line_that_says_where(tmp_path: Path) -> None:
    write_config(tmp_path, "server:\n  port: 1\n bad: 2\n")
    with pytest.raises(ConfigError) as caught:
        ServerSettings.load({"home": tmp_path}, environ={})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'config.yaml'} is not valid YAML (line 3, column 2: ")


def test_kv_cache_and_per_model_settings(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "server:\n  flash-attn: 'on'\n"
        "models:\n"
        "  qwen:\n"
        "    cache-type-k: q8_0\n"
        "    cache_type_v: q8_0\n"
        "    ctx-size: 8192\n"
        "    sampling: {temperature: 0.2}\n",
    )
    s = ServerSettings.load(
        {"home": tmp_path, "cache_type_k": "bf16"}, environ={"KRONK_CACHE_TYPE_V": "q4_0"}
    )
    assert s.load_defaults() == {"cache_type_k": "bf16", "cache_type_v": "q4_0", "flash_attn": "on"}
    assert s.model_options() == {
        "qwen": {
            "n_ctx": 8192,
            "cache_type_k": "q8_0",
            "cache_type_v": "q8_0",
            "sampling_defaults": {"temperature": 0.2},
        }
    }


def test_the_settings_know_every_kv_cache_type_llama_cpp_does() -> None:
    assert set(get_args(CacheType)) == set(KV_CACHE_TYPES)


def test_load_options_layer_and_merge_sampling_key_by_key() -> None:
    catalog = {"n_ctx": 4096, "sampling_defaults": {"temperature": 0.7, "top_k": 20}}
    server = {"n_ctx": 2048, "cache_type_k": "q8_0"}
    model = {"sampling_defaults": {"temperature": 0.2}, "cache_type_k": "f16"}
    assert load_options(catalog, server, model) == {
        "n_ctx": 2048,
        "cache_type_k": "f16",
        "sampling_defaults": {"temperature": 0.2, "top_k": 20},
    }
