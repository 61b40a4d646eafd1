"""The kernel's lifecycle as the nanny sees it: one enum and one transition table.

Every state the nanny writes to its state file, shows in ``nanny-io list``, reports to a
kernel manager and announces in log-channel ticks comes from here, in the manner of h11's
``_state.py``: a move the table does not allow is a bug in the nanny, not a condition to
handle, so it raises.
"""

from __future__ import annotations

from enum import Enum

from .errors import NannyIOError


class KernelState(str, Enum):
    """Where the kernel is; the values are what the state file and ``list`` say."""

    STARTING = "starting"  # launched, not yet answering kernel_info
    RUNNING = "running"
    SHUTTING_DOWN = "shutting-down"  # a shutdown was requested; the kernel still runs
    RESTARTING = "restarting"  # between two incarnations of a restart
    DEAD = "dead"  # exited on its own (or failed to start); the nanny waits
    STOPPED = "stopped"  # shut down for a kernel manager's restart; waits for launch_request


_S = KernelState

#: Which state may follow which.
TRANSITIONS: dict[KernelState, frozenset[KernelState]] = {
    _S.STARTING: frozenset({_S.RUNNING, _S.DEAD, _S.SHUTTING_DOWN}),
    _S.RUNNING: frozenset({_S.DEAD, _S.SHUTTING_DOWN}),
    _S.SHUTTING_DOWN: frozenset({_S.RESTARTING, _S.STOPPED}),
    _S.RESTARTING: frozenset({_S.STARTING}),
    _S.DEAD: frozenset({_S.RESTARTING, _S.STOPPED}),
    _S.STOPPED: frozenset({_S.RESTARTING}),
}

#: States in which a kernel process runs (or is being started or stopped).
KERNEL_PROCESS_STATES = frozenset({_S.STARTING, _S.RUNNING, _S.SHUTTING_DOWN, _S.RESTARTING})

#: What log-channel ticks say (their format knows four states, specs/log-channel.md §5).
_TICK_STATE = {
    _S.STARTING: "starting",
    _S.RUNNING: "running",
    _S.SHUTTING_DOWN: "running",
    _S.RESTARTING: "restarting",
    _S.DEAD: "dead",
    _S.STOPPED: "restarting",  # it waits for its manager's restart
}


class InvalidTransition(NannyIOError):
    """The nanny tried a move its lifecycle does not allow (a bug in the nanny)."""


class Lifecycle:
    """The current state and the only way to change it."""

    def __init__(self, state: KernelState = KernelState.STARTING) -> None:
        self.state = state

    def to(self, new: KernelState) -> None:
        """Move to ``new``; staying where it is is always allowed."""
        if new is not self.state and new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"kernel state {self.state.value!r} -> {new.value!r}")
        self.state = new

    @property
    def tick_state(self) -> str:
        return _TICK_STATE[self.state]


def kernel_process_runs(status: str | None) -> bool:
    """Whether a state file's ``status`` means a kernel process runs; unknown means no."""
    try:
        return KernelState(status) in KERNEL_PROCESS_STATES
    except ValueError:
        return False
