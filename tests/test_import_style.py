"""One import style: function-level imports of our own modules are marked ``# lazy: <reason>``
(Megatron or torch must not load at import time, an entry point sets up first, a cycle), and no
package ``__init__`` writes its own ``__getattr__`` (lazy exports go through sedd_megatron._lazy).
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["sedd_megatron", "tools", "examples", "benchmarks", "pretrain_sedd.py"]


def python_files() -> list[Path]:
    files = []
    for name in SOURCES:
        path = REPO / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def own_module(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "sedd_megatron"
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "sedd_megatron" for alias in node.names)
    return False


def test_function_level_imports_of_our_modules_say_why():
    unmarked = []
    for path in python_files():
        text = path.read_text()
        lines = text.splitlines()
        for func in ast.walk(ast.parse(text)):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if own_module(node) and "# lazy:" not in lines[node.lineno - 1]:
                    rel = path.relative_to(REPO)
                    unmarked.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unmarked, "function-level imports without '# lazy: <reason>':\n" + "\n".join(
        unmarked
    )


def test_packages_define_no_getattr_of_their_own():
    offenders = []
    for init in sorted((REPO / "sedd_megatron").rglob("__init__.py")):
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in ("__getattr__", "__dir__"):
                offenders.append(f"{init.relative_to(REPO)}: def {node.name}")
    assert not offenders, "use sedd_megatron._lazy.lazy_exports:\n" + "\n".join(offenders)


def test_lazy_exports_are_listed():
    import sedd_megatron.datasets as datasets

    assert "get_batch_tokens" in dir(datasets)
    assert set(datasets.__all__) <= set(dir(datasets))
