"""`kronk libs check`: what a llama-cpp-python release changes in the C API kronk uses.

kronk's binding facade (`kronk.llama`) calls llama.cpp through llama-cpp-python's ctypes
module. Before moving the pin, three things must still line up: llama.cpp's C API
(`llama.h`, vendored in llama-cpp-python's sdist), the binding's Python module
(`llama_cpp/llama_cpp.py` in the same sdist), and what the facade calls. This module
reads both from two releases (the installed one from its own `include/llama.h`, others
from their sdists fetched with `pip download`), collects every `lib.NAME` the facade uses
and every struct field it touches, and reports:

- breaking: functions or constants kronk uses that are gone (with a likely replacement),
  whose signature changed, or that the binding no longer wraps; struct fields kronk uses
  that are gone or changed type;
- notes: newly deprecated functions kronk uses, struct layout changes;
- worth adopting: new samplers (`llama_sampler_init_*`) and other new functions.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kronk.errors import DownloadError, KronkError

DIST_NAME = "llama-cpp-python"
PIP_TIMEOUT_S = 600.0
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_API = re.compile(r"\bLLAMA_API\b")
_NAME_BEFORE_PAREN = re.compile(r"(\w+)\s*\($")
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{")
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{")
_ENUM_VALUE = re.compile(r"\b(LLAMA_\w+)\s*=\s*([^,}]+)")
_DEPRECATION_HINT = re.compile(r'^\s*,\s*"([^"]*)"')
_BINDING_DEF = re.compile(r"^def (llama_\w+)\(|^(LLAMA_\w+)\s*=", re.MULTILINE)
_REPLACEMENT = re.compile(r"\b(llama_\w+)\b")


@dataclass
class CApi:
    """The parts of llama.h that matter to a binding."""

    functions: dict[str, str] = field(default_factory=dict)  # name -> normalised signature
    deprecated: dict[str, str] = field(default_factory=dict)  # name -> hint
    structs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name -> fields
    constants: dict[str, str] = field(default_factory=dict)  # enum value name -> value
    binding: set[str] | None = None  # names llama_cpp.py defines (None: not read)


@dataclass
class Report:
    old: str
    new: str
    breaking: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    new_samplers: list[str] = field(default_factory=list)
    new_functions: list[str] = field(default_factory=list)
    used_functions: int = 0
    used_fields: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LibsCheckError(KronkError):
    """A release could not be fetched or read."""


def _squash(text: str) -> str:
    return " ".join(text.split())


def _balanced(text: str, start: int, opening: str, closing: str) -> int:
    """Index just past the bracket that closes the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def parse_header(text: str) -> CApi:
    api = CApi()
    text = _COMMENTS.sub(" ", text)
    for match in _API.finditer(text):
        paren = text.find("(", match.end())
        if paren < 0:
            continue
        head = _NAME_BEFORE_PAREN.search(text[match.end() : paren + 1])
        if head is None:
            continue
        name = head.group(1)
        end = _balanced(text, paren, "(", ")")
        returns = _squash(text[match.end() : match.end() + head.start()])
        api.functions[name] = f"{returns} ({_squash(text[paren + 1 : end - 1])})"
        before = text[max(0, match.start() - 40) : match.start()]
        hint = _DEPRECATION_HINT.match(text[end:])
        if before.rstrip().endswith("DEPRECATED(") and hint is not None:
            api.deprecated[name] = hint.group(1)
    for match in _STRUCT.finditer(text):
        end = _balanced(text, match.end() - 1, "{", "}")
        body = text[match.end() : end - 1]
        fields = (_field(decl) for decl in body.split(";"))
        api.structs[match.group(1)] = [f for f in fields if f is not None]
    for match in _ENUM.finditer(text):
        end = _balanced(text, match.end() - 1, "{", "}")
        for value in _ENUM_VALUE.finditer(text[match.end() : end]):
            api.constants[value.group(1)] = _squash(value.group(2))
    return api


def _field(declaration: str) -> tuple[str, str] | None:
    """(name, type) of `float * tensor_split` or `void (*cb)(int)` or `char name[8]`;
    None for what is not a plain field (nested braces, leftovers)."""
    decl = _squash(declaration)
    if not re.search(r"\w", decl) or "{" in decl or "}" in decl:
        return None
    pointer = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl)
    if pointer:
        return pointer.group(1), decl.replace(pointer.group(0), "(*)")
    bare = re.sub(r"\[[^\]]*\]", "", decl).strip()
    name = re.findall(r"\w+", bare)[-1]
    return name, _squash(decl[: decl.rfind(name)] + decl[decl.rfind(name) + len(name) :])


def binding_names(source: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _BINDING_DEF.finditer(source)}


def facade_usage(folder: Path | None = None) -> tuple[set[str], set[str]]:
    """(`lib.NAME`s, other attribute names) used by kronk's binding facade."""
    folder = folder or Path(__file__).resolve().parents[1] / "llama"
    lib_names: set[str] = set()
    attributes: set[str] = set()
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                if isinstance(node.value, ast.Name) and node.value.id == "lib":
                    lib_names.add(node.attr)
                else:
                    attributes.add(node.attr)
    return lib_names, attributes


def compare(
    old: CApi, new: CApi, *, old_name: str, new_name: str, used: tuple[set[str], set[str]]
) -> Report:
    lib_names, attributes = used
    report = Report(old_name, new_name)
    functions = sorted(n for n in lib_names if n in old.functions)
    constants = sorted(n for n in lib_names if n in old.constants)
    report.used_functions = len(functions)
    added = sorted(set(new.functions) - set(old.functions))
    for name in functions:
        if name not in new.functions:
            report.breaking.append(f"function {name} was removed{_replacement(name, old, added)}")
        elif new.functions[name] != old.functions[name]:
            report.breaking.append(
                f"function {name} changed: {old.functions[name]} -> {new.functions[name]}"
            )
        elif new.binding is not None and name not in new.binding:
            report.breaking.append(f"function {name} is no longer wrapped by {new_name}'s binding")
        if name in new.deprecated and name not in old.deprecated:
            report.notes.append(f"function {name} is deprecated: {new.deprecated[name]}")
    for name in constants:
        if name not in new.constants:
            report.breaking.append(f"constant {name} was removed")
        elif new.constants[name] != old.constants[name]:
            report.breaking.append(
                f"constant {name} changed value: {old.constants[name]} -> {new.constants[name]}"
            )
    # Structs the facade reaches: named as `lib.<struct>`, or in a used function's signature.
    reached = {
        s
        for s in old.structs
        if s in lib_names or any(re.search(rf"\b{s}\b", old.functions[f]) for f in functions)
    }
    for struct, fields in sorted(old.structs.items()):
        mine = [(n, t) for n, t in fields if n in attributes]
        if struct not in reached or not mine:
            continue
        report.used_fields += len(mine)
        new_fields = dict(new.structs.get(struct, []))
        for name, kind in mine:
            if name not in new_fields:
                report.breaking.append(f"field {struct}.{name} was removed")
            elif new_fields[name] != kind:
                report.breaking.append(
                    f"field {struct}.{name} changed type: {kind} -> {new_fields[name]}"
                )
        if new.structs.get(struct) != fields and struct in new.structs:
            change = _layout_change(fields, new.structs[struct])
            report.notes.append(f"struct {struct} changed layout ({change})")
    report.new_samplers = [n for n in added if n.startswith("llama_sampler_init_")]
    report.new_functions = [n for n in added if not n.startswith("llama_sampler_init_")]
    return report


def _replacement(name: str, old: CApi, added: list[str]) -> str:
    hint = old.deprecated.get(name, "")
    named = [n for n in _REPLACEMENT.findall(hint) if n != name]
    if named:
        return f" (deprecated before: {hint})"
    close = difflib.get_close_matches(name, added, n=1, cutoff=0.75)
    return f" (renamed to {close[0]}?)" if close else ""


def _layout_change(old: list[tuple[str, str]], new: list[tuple[str, str]]) -> str:
    old_names, new_names = [n for n, _ in old], [n for n, _ in new]
    gone = [n for n in old_names if n not in new_names]
    came = [n for n in new_names if n not in old_names]
    parts = []
    if came:
        parts.append("added " + ", ".join(came))
    if gone:
        parts.append("removed " + ", ".join(gone))
    if not parts:
        parts.append("fields reordered or retyped")
    return "; ".join(parts)


# -- where the headers come from ----------------------------------------------------------


def installed_api() -> CApi:
    """The installed llama-cpp-python's llama.h (it installs `include/`) and binding."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise LibsCheckError(f"{DIST_NAME} is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    header = package.parent / "include" / "llama.h"
    if not header.is_file():
        raise LibsCheckError(f"{header} is missing; check against a version instead (--old)")
    api = parse_header(header.read_text(encoding="utf-8", errors="replace"))
    api.binding = binding_names((package / "llama_cpp.py").read_text(encoding="utf-8"))
    return api


def release_api(version: str, cache: Path | None = None) -> CApi:
    """llama.h and the binding from `version`'s sdist (downloaded once into `cache`)."""
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        found = sorted(cache.glob(f"llama_cpp_python-{version}.tar.gz"))
        if found:
            return _read_sdist(found[0])
    with tempfile.TemporaryDirectory(prefix="kronk-libs-") as tmp:
        folder = cache or Path(tmp)
        sdist = _download_sdist(version, folder)
        return _read_sdist(sdist)


def _download_sdist(version: str, folder: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "--dest", str(folder), f"{DIST_NAME}=={version}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download of {DIST_NAME} {version} timed out", DIST_NAME) from None
    found = sorted(folder.glob(f"llama_cpp_python-{version}.tar.gz"))
    if done.returncode != 0 or not found:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise DownloadError(f"could not download {DIST_NAME} {version}'s sdist:\n{tail}", DIST_NAME)
    return found[0]


def _read_sdist(path: Path) -> CApi:
    header = binding = None
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.name.endswith("/vendor/llama.cpp/include/llama.h"):
                    header = _read_member(archive, member)
                elif (
                    member.name.endswith("/llama_cpp/llama_cpp.py") and member.name.count("/") == 2
                ):
                    binding = _read_member(archive, member)
    except (OSError, tarfile.TarError) as exc:
        raise LibsCheckError(f"{path} is not a readable sdist ({exc})") from None
    if header is None or binding is None:
        raise LibsCheckError(f"{path} holds no vendored llama.h and binding")
    api = parse_header(header)
    api.binding = binding_names(binding)
    return api


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    stream = archive.extractfile(member)
    if stream is None:
        raise LibsCheckError(f"{member.name} is not a file")
    return stream.read().decode("utf-8", errors="replace")


def render(report: Report) -> list[str]:
    """The report as lines of plain text (it goes to CI logs too)."""
    lines = [
        f"llama-cpp-python {report.old} -> {report.new}: kronk's facade uses "
        f"{report.used_functions} functions and {report.used_fields} struct fields",
    ]
    sections = [
        ("breaking for kronk", report.breaking),
        ("notes", report.notes),
        ("new samplers worth adopting", report.new_samplers),
        ("other new functions", report.new_functions),
    ]
    for title, items in sections:
        lines.append(f"{title}: {len(items) if items else 'none'}")
        lines += [f"  - {item}" for item in items]
    return lines
