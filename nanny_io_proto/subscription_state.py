"""The phases of a log subscription and every legal move between them, in one table.

:class:`~nanny_io_proto.subscription.LogSubscription` (the late joiner of
specs/log-channel.md §9) behaves differently before its history has arrived, while it
falls back to live-only delivery, and once it follows the log. Those phases and the events
that move it between them are listed here, as h11 lists its connection states in
``_state.py``, so that the whole life of a subscription can be read at a glance and an
impossible move is an error instead of a silently inconsistent set of flags.

::

    NEW --start--> HISTORY --history_ended---> FOLLOWING --epoch_changed--> HISTORY
                      |                           ^
                      +--history_refused--> ANCHORING --anchored--+
                                                 |
                                                 +--epoch_changed--> HISTORY
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from .errors import LocalProtocolError

__all__ = ["ESTABLISHED", "TRANSITIONS", "Phase", "Trigger", "next_phase"]


class Phase(Enum):
    """Where a subscription is in its life."""

    #: ``start()`` not called yet; live messages that arrive are held.
    NEW = "new"
    #: The history request of the current epoch is outstanding; live messages are held,
    #: because only the answer's end tells which of them are new.
    HISTORY = "history"
    #: History was refused: the next live batch or tick says where the log is, and the
    #: subscription follows from there (nothing can be repaired before that).
    ANCHORING = "anchoring"
    #: Delivering records in order, deduplicating, repairing gaps from replay.
    FOLLOWING = "following"


class Trigger(Enum):
    """What moves a subscription from one phase to the next."""

    START = "start"  # the caller asked for the history request
    HISTORY_ENDED = "history_ended"  # the history answer's end arrived
    HISTORY_REFUSED = "history_refused"  # the server answered the history request with an error
    ANCHORED = "anchored"  # a live message of the current epoch set the cursor
    EPOCH_CHANGED = "epoch_changed"  # the nanny restarted: start over with its new log


#: Every legal move; anything else is a bug in the subscription.
TRANSITIONS: Mapping[tuple[Phase, Trigger], Phase] = {
    (Phase.NEW, Trigger.START): Phase.HISTORY,
    (Phase.HISTORY, Trigger.HISTORY_ENDED): Phase.FOLLOWING,
    (Phase.HISTORY, Trigger.HISTORY_REFUSED): Phase.ANCHORING,
    (Phase.ANCHORING, Trigger.ANCHORED): Phase.FOLLOWING,
    (Phase.ANCHORING, Trigger.EPOCH_CHANGED): Phase.HISTORY,
    (Phase.FOLLOWING, Trigger.EPOCH_CHANGED): Phase.HISTORY,
}

#: The phases after the current epoch's history request was answered (or refused): live
#: messages are no longer held back, and ``caught_up`` may be true.
ESTABLISHED = frozenset({Phase.ANCHORING, Phase.FOLLOWING})


def next_phase(phase: Phase, trigger: Trigger) -> Phase:
    """The phase after ``trigger`` in ``phase``; LocalProtocolError if the move is illegal."""
    try:
        return TRANSITIONS[phase, trigger]
    except KeyError:
        raise LocalProtocolError(
            f"a log subscription cannot go from {phase.value!r} on {trigger.value!r}"
        ) from None
