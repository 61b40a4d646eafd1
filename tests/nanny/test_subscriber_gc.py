"""The log client's handling of the garbage collector around a replay answer's records."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from nanny_io import subscriber
from nanny_io.subscriber import _gc_paused


class Node:
    """A tracked object, like a LogRecord."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


@pytest.fixture
def gc_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subscriber, "_program_freezes", False)
    was = gc.isenabled()
    yield
    gc.unfreeze()
    if was:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.usefixtures("gc_state")
@pytest.mark.parametrize("enabled", [True, False])
def test_restores_the_collector_state(enabled: bool) -> None:
    if enabled:
        gc.enable()
    else:
        gc.disable()
    with _gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled


@pytest.mark.usefixtures("gc_state")
def test_records_built_inside_skip_the_young_collections() -> None:
    gc.enable()
    with _gc_paused():
        nodes = [Node(i) for i in range(20_000)]
        assert gc.get_count()[0] >= 20_000  # without the move, the next allocation collects
    # Moved to the oldest generation, where no young collection walks them (without the
    # move, the first allocation after the block collects them into generation 1).
    assert any(n is nodes[-1] for n in gc.get_objects(generation=2))
    assert gc.get_freeze_count() == 0  # and nothing stays frozen
    assert sum(n.value for n in nodes) == sum(range(20_000))


@pytest.mark.usefixtures("gc_state")
def test_leaves_the_program_s_frozen_objects_frozen() -> None:
    gc.enable()
    keep = [Node(1)]
    gc.freeze()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    with _gc_paused():
        _ = [Node(i) for i in range(1000)]
    assert gc.get_freeze_count() == frozen
    assert keep[0].value == 1
    assert subscriber._program_freezes  # seen once: not counted again
    gc.unfreeze()
    with _gc_paused():
        nodes = [Node(i) for i in range(1000)]
    assert not any(n is nodes[-1] for n in gc.get_objects(generation=2))  # no longer moved
