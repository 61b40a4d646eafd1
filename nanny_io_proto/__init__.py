"""The nanny-io wire protocol: pure, with no sockets, processes, threads, clocks or files.

Time, ids and keys are passed in by the caller. specs/ is the authority for every format
implemented here.
"""
