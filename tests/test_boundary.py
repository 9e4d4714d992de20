"""The torch boundary (docs/architecture.md): the web server and the pages never import torch.

torch is imported at module level only in core/nn and core/train. Every other package of core/, ui/ and the
pages import without it: their commands (core.caption, core.evaluate, core.bundle.join) import core.nn inside
the functions that need a model. These tests fail on the first module that crosses the line.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_FREE = ("base", "data", "bundle", "runs", "caption", "evaluate", "device")
TORCH_PACKAGES = ("nn", "train")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def torch_free_modules() -> list[str]:
    """Every module of the torch-free packages (their __main__ entry points aside: those run a command) and of ui/."""
    files = [p for pkg in TORCH_FREE for p in sorted((ROOT / "core" / pkg).glob("*.py")) if p.name != "__main__.py"]
    files += sorted((ROOT / "ui").glob("*.py"))
    return [module_name(p).removesuffix(".__init__") for p in files]


def page_imports() -> list[str]:
    """The modules app.py and the pages import (they are scripts Streamlit runs, not modules)."""
    names = []
    for page in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(page.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("core", "ui"):
                names.append(node.module)
            elif isinstance(node, ast.Import):
                names += [a.name for a in node.names if a.name.split(".")[0] in ("core", "ui")]
    return sorted(set(names))


def test_the_torch_free_packages_and_the_pages_import_without_torch():
    """With torch made unimportable, every torch-free module and every module a page uses imports."""
    modules = torch_free_modules() + page_imports()
    assert "core.caption.library" in modules and "ui.review" in modules and "core.bundle.store" in modules
    code = (
        "import importlib, sys, traceback\n"
        "for blocked in ('torch', 'torchvision', 'timm'):\n"
        "    sys.modules[blocked] = None  # import torch -> ImportError\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as e:\n"
        "        print(f'{name} imports torch (or a torch package): {e}')\n"
        "        traceback.print_exc()\n"
        "        sys.exit(1)\n"
        "print('ok', len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr


def module_level_imports(path: Path) -> set[str]:
    """The modules a file imports when it is imported: its top level, not inside functions (TYPE_CHECKING aside)."""
    found = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return found


def test_no_torch_free_module_imports_core_nn_or_core_train_at_import_time():
    """Some modules of core.nn import torch lazily; importing them is still crossing the line, so it is checked
    by name too (a module-level import of core.nn would load torch the day that module imports it at the top)."""
    crossing = []
    for pkg in TORCH_FREE:
        for path in sorted((ROOT / "core" / pkg).glob("*.py")):
            if path.name == "__main__.py":
                continue
            for name in module_level_imports(path):
                if name.split(".")[:2] in (["core", p] for p in TORCH_PACKAGES) or name.split(".")[0] == "torch":
                    crossing.append(f"{module_name(path)} imports {name}")
    assert not crossing, crossing


def test_core_base_is_the_bottom_layer():
    """core.base (paths, files, processes, config) imports no other package of core/, so anything can use it."""
    for path in sorted((ROOT / "core" / "base").glob("*.py")):
        others = {n for n in module_level_imports(path) if n.startswith("core.") and not n.startswith("core.base")}
        assert not others, (path.name, others)


def test_no_module_is_left_flat_in_core():
    """core/ holds packages only: a new module goes into the package whose rule it follows."""
    assert sorted(p.name for p in (ROOT / "core").glob("*.py")) == ["__init__.py"]


def test_no_import_circle_in_core():
    """Modules import each other one way: a circle (bundle -> model -> ensemble -> bundle, once) makes the import
    order decide what works, and is held together only by imports hidden inside functions."""
    modules = {module_name(p).removesuffix(".__init__"): p for p in sorted((ROOT / "core").rglob("*.py"))
               if p.name != "__main__.py"}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.parse(path.read_text()).body:  # module level, as module_level_imports but with names
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core"):
                for alias in node.names:  # `from core.caption import store`: the module core.caption.store
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
        graph[name] = {e for e in edges if e in modules and e != name}
    state = {}

    def visit(name, path):
        state[name] = "open"
        for nxt in graph[name]:
            if state.get(nxt) == "open":
                raise AssertionError(" -> ".join(path + [name, nxt]))
            if nxt not in state:
                visit(nxt, path + [name])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])
