"""Public functions and classes document themselves in one parseable style (Google style, as
Keras writes it): ``Args:`` naming every parameter, ``Returns:`` where something is returned.

Public means: listed in a module's ``__all__`` and defined in that module. Classes document
their constructor arguments in the class docstring (or ``__init__``'s); dataclass fields are
``Attributes:``.
"""

import dataclasses
import importlib
import inspect
import pkgutil

import docstring_parser
import pytest

import keras_eigenconv

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(keras_eigenconv.__path__, "keras_eigenconv.")
    if m.name != "keras_eigenconv.__main__"
)


def _public(module_name):
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name, None)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module_name:
            yield name, obj


def _named_params(fn, skip=("self", "cls")):
    sig = inspect.signature(fn)
    out = []
    for p in sig.parameters.values():
        if p.name in skip or p.kind == p.VAR_KEYWORD and p.name == "kwargs":
            continue
        out.append(
            ("*" if p.kind == p.VAR_POSITIONAL else "**" if p.kind == p.VAR_KEYWORD else "")
            + p.name
        )
    return out


def _documented(doc):
    parsed = docstring_parser.parse(doc, style=docstring_parser.DocstringStyle.GOOGLE)
    names = set()
    for p in parsed.params:
        names.add(p.arg_name.lstrip("*"))
    return parsed, names


def _problems(name, obj):
    doc = inspect.getdoc(obj)
    if not doc:
        return [f"{name}: no docstring"]
    problems = []
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            fields = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")]
            if fields and "Attributes:" not in doc:
                problems.append(f"{name}: dataclass without an Attributes: section")
            return problems
        init = obj.__dict__.get("__init__")
        if init is None:
            return problems
        params = [p.lstrip("*") for p in _named_params(init)]
        doc = doc + "\n" + (inspect.getdoc(init) or "")
    else:
        params = [p.lstrip("*") for p in _named_params(obj)]
    if params:
        _, documented = _documented(doc)
        missing = [p for p in params if p not in documented]
        if "Args:" not in doc:
            problems.append(f"{name}: no Args: section (parameters {params})")
        elif missing:
            problems.append(f"{name}: Args: misses {missing}")
    if inspect.isfunction(obj):
        ret = inspect.signature(obj).return_annotation
        if ret not in (None, "None", inspect.Signature.empty) and "Returns:" not in doc:
            problems.append(f"{name}: returns {ret} but has no Returns: section")
    return problems


@pytest.mark.parametrize("module_name", MODULES)
def test_public_docstrings_are_google_style(module_name):
    module = importlib.import_module(module_name)
    if not module_name.rsplit(".", 1)[-1].startswith("_"):
        assert hasattr(module, "__all__"), f"{module_name} declares no __all__"
        assert inspect.getdoc(module), f"{module_name} has no module docstring"
    problems = [p for name, obj in _public(module_name) for p in _problems(name, obj)]
    assert not problems, "\n".join(problems)


def test_the_package_does_not_point_outside_itself():
    import pathlib

    root = pathlib.Path(keras_eigenconv.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "METHODS.md" not in text and "../shared" not in text, path
