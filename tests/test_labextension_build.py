"""The committed build of the JupyterLab extension (``nanny_io/labextension``) is the one built
from the sources in ``labextension/``, and is what a wheel ships. Needs no node: the build
script records a digest of the sources (labextension/stamp.py), compared here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "labextension"
BUILT = ROOT / "nanny_io" / "labextension"
#: The committed bundle stays small: production mode, no source maps.
MAX_BUNDLE_BYTES = 200_000


def stamp_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("labextension_stamp", SOURCES / "stamp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_build_is_built_from_the_sources() -> None:
    stamp = json.loads((BUILT / "build-stamp.json").read_text())
    assert stamp["sources_sha256"] == stamp_module().digest(), (
        "nanny_io/labextension was not built from the current labextension/ sources: "
        "rebuild it (cd labextension && jlpm install && jlpm build) and commit the result"
    )


def test_committed_build_is_complete_and_small() -> None:
    package = json.loads((BUILT / "package.json").read_text())
    source = json.loads((SOURCES / "package.json").read_text())
    assert package["name"] == source["name"] == "nanny-io"
    assert package["version"] == source["version"]
    entry = BUILT / package["jupyterlab"]["_build"]["load"]
    assert entry.is_file(), f"the bundle's entry point {entry} is missing"
    assert (BUILT / "schemas" / "nanny-io" / "plugin.json").is_file()
    static = list((BUILT / "static").iterdir())
    assert not [p.name for p in static if p.suffix == ".map"], "source maps in the build"
    size = sum(p.stat().st_size for p in static)
    assert size < MAX_BUNDLE_BYTES, f"the bundle grew to {size} bytes"


def test_wheel_installs_it_as_share_jupyter_labextensions_nanny_io() -> None:
    """pyproject.toml maps the build (shared-data) where Lab finds prebuilt extensions."""
    text = (ROOT / "pyproject.toml").read_text()  # no tomllib on Python 3.10
    assert '"nanny_io/labextension" = "share/jupyter/labextensions/nanny-io"' in text
    assert (
        '"labextension/install.json" = "share/jupyter/labextensions/nanny-io/install.json"' in text
    )
    assert json.loads((SOURCES / "install.json").read_text())["packageName"] == "nanny-io"
