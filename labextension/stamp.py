"""Record which sources the committed build of the JupyterLab extension was made from.

``jlpm build`` runs this last: it writes ``build-stamp.json`` into the output directory with a
SHA-256 over the extension's sources (``src/``, ``style/``, ``schema/``, ``package.json``,
``tsconfig.json``, ``yarn.lock``). ``tests/test_labextension.py`` computes the same digest
without node and fails when the two differ, so the sources and the committed bundle cannot
drift apart silently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "nanny_io" / "labextension"
STAMP = OUTPUT / "build-stamp.json"
SOURCES = ("src", "style", "schema", "package.json", "tsconfig.json", "yarn.lock")


def source_files(root: Path = HERE) -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = root / name
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def digest(root: Path = HERE) -> str:
    """SHA-256 over every source file's relative path and bytes, in a fixed order."""
    sha = hashlib.sha256()
    for path in source_files(root):
        sha.update(path.relative_to(root).as_posix().encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()


def main() -> None:
    STAMP.write_text(json.dumps({"sources_sha256": digest()}, indent=1) + "\n")
    print(f"stamped {STAMP.relative_to(HERE.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
