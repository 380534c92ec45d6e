"""The tree shows the pipeline: no import cycles, packages depend only on the layers below them, a short root,
no sys.path edits, and comments point into this repository (docs/) or to papers, not to an outside document."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a package may import its own modules and those of strictly lower layers (docs/architecture.md)
LAYERS = (
    ("utils",),
    ("networks", "dataloaders"),
    ("methods",),
    ("inference",),
    ("viz",),
    ("evaluation",),
    ("training",),
    ("reproduction", "toy", "data"),
    ("tools", "benchmarks", "scripts"),
)
ROOT_SCRIPTS = {"train_la.py", "train_acdc.py", "test_la.py", "test_acdc.py", "train.py", "predict.py", "reproduce.py",
                "demo.py"}


def project_files() -> dict[str, Path]:
    """{module name: file} of every Python file of the project outside tests/."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in {"tests", ".git", ".venv", "model", "demo_runs"} or "__pycache__" in relative.parts:
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return result


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for level, packages in enumerate(LAYERS):
        if top in packages:
            return level
    return len(LAYERS) - 1  # root scripts: the top


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packages_import_only_lower_layers():
    wrong = []
    for module, imported in import_graph().items():
        for other in imported:
            same_package = module.split(".")[0] == other.split(".")[0]
            if not same_package and layer_of(other) >= layer_of(module):
                wrong.append(f"{module} -> {other}")
    assert wrong == []


def test_root_holds_the_main_jobs_and_the_designed_top_level():
    scripts = {p.name for p in ROOT.glob("*.py")}
    assert scripts == ROOT_SCRIPTS
    for required in ("networks", "dataloaders", "utils", "data", "requirements.txt", "README.md", "docs"):
        assert (ROOT / required).exists(), required


def test_no_sys_path_edits_outside_tests():
    offenders = [str(p.relative_to(ROOT)) for p in project_files().values()
                 if re.search(r"sys\.path\.(insert|append)", p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_comments_cite_the_repository_or_papers_not_an_outside_spec():
    outside_spec = re.compile("spec" + " §")  # split, so that this file does not match itself
    offenders = [str(p.relative_to(ROOT)) for p in [*project_files().values(), *ROOT.glob("tests/*.py")]
                 if outside_spec.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_pyproject_declares_what_requirements_txt_installs():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | {d for extra in project["optional-dependencies"].values() for d in extra}
    required = {line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert required == declared


def test_pyproject_installs_no_package_of_the_checkout():
    """A checkout-run toolkit: `pip install .` brings the dependencies only. Packages and modules are declared
    empty, which also turns setuptools' discovery off (it would find `utils`, `data`, ... at the top level)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools.get("packages") == [] and setuptools.get("py-modules") == [], setuptools
    assert {p.parent.name for p in ROOT.glob("*/__init__.py")} >= {"utils", "data", "networks", "dataloaders"}


@pytest.mark.slow
def test_the_wheel_of_pip_install_holds_metadata_only(tmp_path):
    """Build the wheel `pip install .` would install (a copy of the checkout, no network, no build isolation):
    it holds its dist-info and nothing else, and requires what requirements.txt installs."""
    pytest.importorskip("setuptools")
    source = tmp_path / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".test_cache", "__pycache__", "*.pth",
                                                                 "model", "runs", "demo_runs", ".device_data"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "--quiet", "--wheel-dir", str(tmp_path / "wheel")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        assert [n for n in names if not n.startswith(info + "/")] == []
        metadata = archive.read(f"{info}/METADATA").decode()
        top_level = archive.read(f"{info}/top_level.txt").decode() if f"{info}/top_level.txt" in names else ""
    assert top_level.strip() == ""
    assert "Requires-Dist: torch==2.13.0" in metadata and "Requires-Dist: medpy" in metadata
