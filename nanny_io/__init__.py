"""nanny-io: a Jupyter kernel nanny built around logging and I/O capture."""

__version__ = "0.1.0"
