"""One error tree: every exception jupyter-cc raises is a CCError named ``...Error``, and the map
in jupyter_cc/errors.py names each of them, so a reader sees the whole tree in one place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import jupyter_cc
from jupyter_cc import errors
from jupyter_cc.errors import CCError

# The user's own exception, re-raised from the TEE with its remote traceback: not a check of ours.
NOT_OURS = {"jupyter_cc.notebook.session.RemoteError"}


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(jupyter_cc.__path__, "jupyter_cc."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_is_a_ccerror_named_for_what_failed() -> None:
    classes = _exception_classes()
    assert len(classes) > 20  # the walk really imported the package
    strays = [name for name, cls in classes.items() if name not in NOT_OURS and not issubclass(cls, CCError)]
    assert strays == []
    misnamed = [name for name in classes if name not in NOT_OURS and not name.endswith("Error")]
    assert misnamed == []


def test_the_error_map_in_errors_names_every_leaf_where_it_lives() -> None:
    doc = errors.__doc__ or ""
    missing = [
        name
        for name, cls in _exception_classes().items()
        if name not in NOT_OURS and cls.__module__ != "jupyter_cc.errors" and name not in doc
    ]
    assert missing == [], "add these to the error map in jupyter_cc/errors.py"
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), CCError)
