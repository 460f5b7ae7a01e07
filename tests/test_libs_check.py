"""`kronk libs check` on two real llama-cpp-python releases: the installed 0.3.36 (its own
include/llama.h) and 0.3.16 (its sdist, fetched once with pip into the test cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import kronk_test_cache_dir
from kronk.tools import libs_check
from test_cli import kronk

OLDER = "0.3.16"


@pytest.fixture(scope="module")
def cache() -> Path:
    return kronk_test_cache_dir() / "sdists"


@pytest.fixture(scope="module")
def older(cache: Path) -> libs_check.CApi:
    return libs_check.release_api(OLDER, cache)


def test_upgrading_from_an_older_release_reports_what_kronk_must_change(
    older: libs_check.CApi,
) -> None:
    installed = libs_check.installed_api()
    used = libs_check.facade_usage()
    report = libs_check.compare(older, installed, old_name=OLDER, new_name="0.3.36", used=used)
    assert report.used_functions > 50 and report.used_fields > 10
    breaking = "\n".join(report.breaking)
    # Facts of the two real headers, each of which kronk's facade touches.
    assert "function llama_sampler_init_penalties changed" in breaking  # n_vocab came back
    assert "(int32_t n_vocab, int32_t penalty_last_n" in breaking
    assert "field llama_model_params.use_mmap was removed" in breaking  # now load_mode
    assert "field llama_context_params.flash_attn was removed" in breaking  # flash_attn_type
    assert "llama_sampler_init_adaptive_p" in report.new_samplers
    assert any("llama_context_params changed layout" in n for n in report.notes)
    # And the other way round: what kronk uses that the older release did not have yet.
    back = libs_check.compare(installed, older, old_name="0.3.36", new_name=OLDER, used=used)
    assert "function llama_n_ctx_seq was removed" in back.breaking
    assert "constant LLAMA_FLASH_ATTN_TYPE_AUTO was removed" in back.breaking


def test_the_installed_release_against_itself_changes_nothing() -> None:
    installed = libs_check.installed_api()
    assert len(installed.deprecated) > 5  # DEPRECATED(...) declarations are recognised
    assert installed.binding is not None and "llama_decode" in installed.binding
    report = libs_check.compare(
        installed, installed, old_name="a", new_name="a", used=libs_check.facade_usage()
    )
    assert (report.breaking, report.notes, report.new_functions) == ([], [], [])


def test_the_command_prints_json_and_fails_on_breaking_changes(
    cache: Path, older: libs_check.CApi, tmp_path: Path
) -> None:
    result = kronk("libs", "check", "--version", OLDER, "--cache", cache, "--json", home=tmp_path)
    assert result.exit_code == 1  # kronk would break on the older release
    report = json.loads(result.stdout)
    assert report["old"] == "0.3.36" and report["new"] == OLDER
    assert "function llama_n_ctx_seq was removed" in report["breaking"]
    missing = kronk("libs", "check", "--version", "0.0.0.404", "--cache", tmp_path, home=tmp_path)
    assert missing.exit_code == 1
    assert "could not download llama-cpp-python 0.0.0.404" in missing.stderr


def test_header_parsing_of_declarations_kronk_meets() -> None:
    api = libs_check.parse_header(
        """
        struct llama_x_params {
            int32_t n_ctx;       // comment
            void (*cb)(void * data, int n);
            char name[8];
        };
        enum llama_t { LLAMA_T_A = 0, LLAMA_T_B = -1, };
        LLAMA_API int32_t llama_f(const struct llama_x_params * p,
                                  int32_t   n);
        DEPRECATED(LLAMA_API void llama_g(void), "use llama_f instead");
        """
    )
    assert api.functions == {
        "llama_f": "int32_t (const struct llama_x_params * p, int32_t n)",
        "llama_g": "void (void)",
    }
    assert api.deprecated == {"llama_g": "use llama_f instead"}
    assert api.structs["llama_x_params"] == [
        ("n_ctx", "int32_t"),
        ("cb", "void (*)(void * data, int n)"),
        ("name", "char [8]"),
    ]
    assert api.constants == {"LLAMA_T_A": "0", "LLAMA_T_B": "-1"}
