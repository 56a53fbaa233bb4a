"""The loop keeps what lives as long as the process out of the collector's full
passes: frozen once the caches are filled, again once a burst of new records has
settled, and thawed for one full collection every so often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hybrid_compute.control import loop
from hybrid_compute.control.loop import Freezer


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_burst_is_frozen_once_a_quiet_pass_follows_it(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    freezer = Freezer()
    freezer.freeze(1000)
    freezer.after_pass(1000, quiet=True)  # the first quiet pass: the memo it filled
    held = [[index] for index in range(5000)]  # lists, which the collector tracks
    freezes: list[int] = []
    real_freeze = gc.freeze

    def counted() -> None:
        freezes.append(1)
        real_freeze()

    monkeypatch.setattr(gc, "freeze", counted)
    freezer.after_pass(1300, quiet=False)
    assert not freezes, "the burst is still arriving"
    freezer.after_pass(1200, quiet=True)
    assert not freezes, "a small growth is left to the collector"
    freezer.after_pass(1400, quiet=True)
    assert freezes == [1]
    # Frozen objects leave the collector's generations. (Counting frozen objects
    # instead is not exact: frozen objects of earlier tests die meanwhile.)
    held_ids = {id(item) for item in held}
    assert not any(id(item) in held_ids for item in gc.get_objects()), \
        "the burst is frozen"


def test_the_first_quiet_pass_freezes_what_it_filled(monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    freezer = Freezer()
    freezer.freeze(10)
    freezes: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(1))
    freezer.after_pass(10, quiet=False)
    assert not freezes, "the first passes are still writing"
    freezer.after_pass(10, quiet=True)
    freezer.after_pass(10, quiet=True)
    assert freezes == [1]


def test_a_full_collection_runs_every_so_often(monkeypatch: pytest.MonkeyPatch) -> None:
    freezer = Freezer()
    freezer.freeze(10)
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *args: collected.append(1) or 0)
    monkeypatch.setattr(loop, "FULL_COLLECTION_SECONDS", 0.0)
    thawed: list[int] = []
    monkeypatch.setattr(gc, "unfreeze", lambda: thawed.append(1))
    freezer.after_pass(10, quiet=False)
    assert thawed == [1] and collected == [1], "frozen garbage is reclaimed"
