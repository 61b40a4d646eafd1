"""nanny-io: a Jupyter kernel nanny built around logging and I/O capture."""

__version__ = "0.1.0"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension is (for ``jupyter labextension develop``)."""
    return [{"src": "labextension", "dest": "nanny-io"}]
