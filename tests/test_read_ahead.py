"""run/read_ahead.py: a regional job opens its next scenes in a thread, ahead of the
submission loop; order, errors and stopping must be exactly those of the plain iterator."""

from __future__ import annotations

import threading

import pytest

from reattn_batch.run.read_ahead import read_ahead


def test_items_come_in_order_and_at_most_depth_ahead():
    produced: list[int] = []
    consumed: list[int] = []
    gate = threading.Event()

    def source():
        for i in range(10):
            produced.append(i)
            yield i

    ahead = read_ahead(source(), depth=2)
    consumed.append(next(ahead))
    gate.wait(0.5)  # give the thread time to run ahead as far as it may
    # one handed out, two waiting in the queue, one made and blocked on the full queue
    assert len(produced) <= 1 + 2 + 1
    consumed.extend(ahead)
    assert consumed == list(range(10)) == produced


def test_an_error_of_the_source_is_raised_at_its_place():
    def source():
        yield 1
        yield 2
        raise ValueError("scene 3 is broken")

    ahead = read_ahead(source(), depth=4)
    assert next(ahead) == 1 and next(ahead) == 2
    with pytest.raises(ValueError, match="scene 3 is broken"):
        next(ahead)


def test_close_stops_the_source_and_waits_for_it():
    produced: list[int] = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    ahead = read_ahead(source(), depth=1)
    assert next(ahead) == 0
    ahead.close()
    after_close = len(produced)
    threading.Event().wait(0.3)
    assert len(produced) == after_close < 1000  # nothing of the source ran after close()
    assert not any(t.name == "read-ahead" and t.is_alive() for t in threading.enumerate())
