"""The phase table of LogSubscription (nanny_io_proto.subscription_state)."""

from __future__ import annotations

import itertools

import pytest

from nanny_io_proto.errors import LocalProtocolError
from nanny_io_proto.subscription_state import (
    ESTABLISHED,
    TRANSITIONS,
    Phase,
    Trigger,
    next_phase,
)


def test_every_move_outside_the_table_is_refused() -> None:
    for phase, trigger in itertools.product(Phase, Trigger):
        if (phase, trigger) in TRANSITIONS:
            assert next_phase(phase, trigger) is TRANSITIONS[phase, trigger]
        else:
            with pytest.raises(LocalProtocolError, match=phase.value):
                next_phase(phase, trigger)


def test_every_phase_is_reachable_and_none_is_a_dead_end_but_new() -> None:
    reached = {Phase.NEW}
    frontier = [Phase.NEW]
    while frontier:
        phase = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is phase and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(Phase)
    assert all(any(src is phase for src, _ in TRANSITIONS) for phase in Phase)
    assert not any(dst is Phase.NEW for dst in TRANSITIONS.values())  # start happens once


def test_the_life_of_a_subscription() -> None:
    phase = Phase.NEW
    for trigger, expected in [
        (Trigger.START, Phase.HISTORY),
        (Trigger.HISTORY_REFUSED, Phase.ANCHORING),
        (Trigger.ANCHORED, Phase.FOLLOWING),
        (Trigger.EPOCH_CHANGED, Phase.HISTORY),
        (Trigger.HISTORY_ENDED, Phase.FOLLOWING),
    ]:
        phase = next_phase(phase, trigger)
        assert phase is expected
    assert {Phase.ANCHORING, Phase.FOLLOWING} == ESTABLISHED
