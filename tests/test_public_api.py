"""The public surface: __all__, docstrings, the documented import, py.typed, a plain __init__."""

from __future__ import annotations

import ast
import inspect
import itertools
import subprocess
import sys
import types
from importlib import resources
from pathlib import Path

import pytest

import orchestrator
from orchestrator.testing import EventRecorder

PACKAGE_DIR = Path(orchestrator.__file__).parent


def own_doc(obj: object) -> str | None:
    """The docstring ``obj`` was written with, not one inherited or generated for it."""
    if isinstance(obj, type):
        doc = obj.__dict__.get("__doc__")
        # dataclasses and NamedTuple generate "Name(field, ...)" when none was written.
        if isinstance(doc, str) and doc.startswith(f"{obj.__name__}("):
            return None
        return doc
    if isinstance(obj, property):
        return obj.__doc__
    if isinstance(obj, classmethod | staticmethod):
        return obj.__func__.__doc__
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return obj.__doc__
    return None


def attribute_docstring(name: str) -> str | None:
    """The string after ``name = ...`` in the module that ``__init__`` imports ``name`` from."""
    init = ast.parse((PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8"))
    sources = [
        statement.module
        for statement in init.body
        if isinstance(statement, ast.ImportFrom)
        and statement.level == 1
        and statement.module is not None
        and any(alias.name == name and alias.asname is None for alias in statement.names)
    ]
    assert len(sources) == 1, f"{name} is not imported exactly once in __init__.py"
    path = PACKAGE_DIR / f"{sources[0].replace('.', '/')}.py"
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for statement, following in itertools.pairwise(body):
        if isinstance(statement, ast.Assign):
            targets = [t.id for t in statement.targets if isinstance(t, ast.Name)]
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            targets = [statement.target.id]
        else:
            continue
        if (
            name in targets
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            return following.value.value
    return None


def test_all_lists_only_names_that_exist() -> None:
    missing = [name for name in orchestrator.__all__ if not hasattr(orchestrator, name)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(orchestrator.__all__) == len(set(orchestrator.__all__))


def test_every_public_attribute_is_in_all() -> None:
    public = {
        name
        for name, value in vars(orchestrator).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(orchestrator.__all__)


def test_all_contains_the_documented_entry_points() -> None:
    expected = {"Orchestrator", "RetryPolicy", "ActionTimeout", "set_testing", "State"}
    assert expected <= set(orchestrator.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from orchestrator import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(orchestrator.__all__)


@pytest.mark.parametrize("name", orchestrator.__all__)
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(orchestrator, name)
    doc = own_doc(obj)
    if doc is None and not (isinstance(obj, type) or inspect.isfunction(obj)):
        # A type alias cannot carry __doc__: its docstring is the string after its assignment.
        doc = attribute_docstring(name)
    assert doc is not None
    assert doc.strip()


def public_methods() -> list[tuple[str, str, object]]:
    rows: list[tuple[str, str, object]] = []
    for cls in (orchestrator.Orchestrator, orchestrator.Action, orchestrator.RetryPolicy):
        rows.extend(_methods_of(cls))
    rows.extend(_methods_of(EventRecorder))
    return rows


def _methods_of(cls: type) -> list[tuple[str, str, object]]:
    return [
        (cls.__name__, name, value)
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, property | classmethod | staticmethod))
    ]


def test_the_classes_have_public_methods_to_check() -> None:
    names = {(cls, name) for cls, name, _ in public_methods()}
    assert {
        ("Orchestrator", "run"),
        ("Orchestrator", "run_sync"),
        ("Orchestrator", "action"),
        ("Orchestrator", "parallel"),
        ("Orchestrator", "map"),
        ("Orchestrator", "get_state"),
        ("Orchestrator", "set_state"),
        ("Orchestrator", "on_task_retry"),
        ("Action", "retry"),
        ("Action", "timeout"),
        ("RetryPolicy", "wait"),
        ("EventRecorder", "events"),
        ("EventRecorder", "points"),
    } <= names


@pytest.mark.parametrize(
    ("cls", "name", "member"),
    public_methods(),
    ids=[f"{cls}.{name}" for cls, name, _ in public_methods()],
)
def test_every_public_method_has_a_docstring(cls: str, name: str, member: object) -> None:
    doc = own_doc(member)
    assert doc is not None, f"{cls}.{name} has no docstring"
    assert doc.strip()


def test_documented_import_works() -> None:
    from orchestrator import Orchestrator, RetryPolicy

    assert isinstance(Orchestrator, type)
    assert isinstance(RetryPolicy, type)
    assert RetryPolicy().retries == 3
    assert Orchestrator().run_sync(lambda: "ran") == "ran"


def test_documented_import_works_in_a_fresh_interpreter() -> None:
    code = (
        "from orchestrator import Orchestrator, RetryPolicy\n"
        "print(Orchestrator.__name__, RetryPolicy.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Orchestrator", "RetryPolicy"]


def test_py_typed_is_shipped_in_the_package_directory() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert resources.files("orchestrator").joinpath("py.typed").is_file()


def test_init_has_no_logic() -> None:
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8"))
    assert tree.body, "__init__.py is empty"
    first, *rest = tree.body
    assert isinstance(first, ast.Expr)
    assert isinstance(first.value, ast.Constant)
    assert isinstance(first.value.value, str), "__init__.py starts with its docstring"
    all_assignments = 0
    for statement in rest:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            continue
        assert isinstance(statement, ast.Assign), ast.dump(statement)
        assert [ast.unparse(t) for t in statement.targets] == ["__all__"]
        assert isinstance(statement.value, ast.List | ast.Tuple)
        assert all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in statement.value.elts
        )
        all_assignments += 1
    assert all_assignments == 1


OPTIONAL = ("opentelemetry", "rich")


@pytest.mark.parametrize(
    "module", ["orchestrator", "orchestrator.testing", "orchestrator.logs", "orchestrator.timeline"]
)
def test_importing_imports_no_optional_dependency(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "dependency"),
    [("orchestrator.otel", "opentelemetry"), ("orchestrator.progress", "rich")],
)
def test_each_integration_imports_only_its_own_dependency(module: str, dependency: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr([dependency])


INTEGRATIONS = (
    "orchestrator.otel",
    "orchestrator.logs",
    "orchestrator.progress",
    "orchestrator.timeline",
)


def integration_members() -> list[tuple[str, str, object]]:
    import importlib

    rows: list[tuple[str, str, object]] = []
    for name in INTEGRATIONS:
        module = importlib.import_module(name)
        for member in module.__all__:
            value = getattr(module, member)
            if inspect.isfunction(value) or isinstance(value, type):
                rows.append((name, member, value))
                if isinstance(value, type):
                    rows.extend((name, f"{member}.{m}", v) for _, m, v in _methods_of(value))
    return rows


@pytest.mark.parametrize(
    ("module", "name", "member"),
    integration_members(),
    ids=[f"{module}.{name}" for module, name, _ in integration_members()],
)
def test_every_public_function_and_class_of_the_integrations_has_a_docstring(
    module: str, name: str, member: object
) -> None:
    doc = own_doc(member)
    assert doc is not None, f"{module}.{name} has no docstring"
    assert doc.strip()
