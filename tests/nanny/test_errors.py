"""Every exception nanny_io defines derives from the one root, NannyIOError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import nanny_io
from nanny_io.errors import NannyIOError


def _defined_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.iter_modules(nanny_io.__path__, "nanny_io."):
        if info.name == "nanny_io.__main__":  # importing it runs the CLI
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_nanny_io_exception_has_the_one_root() -> None:
    exceptions = _defined_exceptions()
    names = {cls.__name__ for cls in exceptions}
    # the ones that existed when the root was introduced, so the walk is known to work
    assert {"CLIError", "KernelNotFound", "KernelStartError", "ControlTimeout"} <= names
    assert {"KernelSpecError", "NannyIOError"} <= names
    strays = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in exceptions
        if not issubclass(cls, NannyIOError)
    ]
    assert not strays, f"exceptions outside the NannyIOError hierarchy: {strays}"
