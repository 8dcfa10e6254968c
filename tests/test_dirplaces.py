"""Where the kernel may hold each directory (kvfs.fuse.dirplaces): pure bookkeeping."""

from __future__ import annotations

from kvfs.fuse.dirplaces import DirPlaces

P1, P2, P3 = 10, 20, 30
D, E = 100, 200


def test_a_refused_move_keeps_the_old_place_until_it_is_dropped() -> None:
    """Shown at a new place, a directory may still be at the old one (the kernel refused
    the move): both stay on record, and the old one is dropped at the next lookup."""
    dirs = DirPlaces()
    dirs.place(D, (P1, b"a"))
    assert dirs.elsewhere(D, (P2, b"b")) == [(P1, b"a")]
    dirs.place(D, (P2, b"b"))  # the old name could not be dropped (or was, and came back)
    assert dirs.elsewhere(D, (P2, b"b")) == [(P1, b"a")]
    dirs.dropped((P1, b"a"))
    assert dirs.elsewhere(D, (P2, b"b")) == []
    assert dirs.places(D) == {(P2, b"b")}


def test_a_move_within_one_parent_needs_no_drop() -> None:
    dirs = DirPlaces()
    dirs.place(D, (P1, b"a"))
    assert dirs.elsewhere(D, (P1, b"b")) == []
    dirs.place(D, (P1, b"b"))
    assert dirs.places(D) == {(P1, b"b")}


def test_a_name_taken_by_another_directory_leaves_the_first() -> None:
    dirs = DirPlaces()
    dirs.place(D, (P1, b"a"))
    dirs.place(E, (P1, b"a"))
    assert dirs.places(D) == set() and dirs.places(E) == {(P1, b"a")}


def test_own_renames_move_and_exchange_places() -> None:
    dirs = DirPlaces()
    dirs.place(D, (P1, b"a"))
    dirs.place(E, (P2, b"b"))
    dirs.renamed((P1, b"a"), (P2, b"b"), exchange=True)
    assert dirs.places(D) == {(P2, b"b")} and dirs.places(E) == {(P1, b"a")}
    dirs.renamed((P1, b"a"), (P3, b"c"), exchange=False)
    assert dirs.places(E) == {(P3, b"c")}
    dirs.renamed((P3, b"c"), (P2, b"b"), exchange=False)  # replaces D
    assert dirs.places(E) == {(P2, b"b")} and dirs.places(D) == set()


def test_forget_removes_every_place() -> None:
    dirs = DirPlaces()
    dirs.place(D, (P1, b"a"))
    dirs.place(D, (P2, b"b"))
    dirs.forget(D)
    assert dirs.places(D) == set()
    dirs.dropped((P1, b"a"))  # nothing left to drop: no error
    dirs.place(E, (P1, b"a"))
    assert dirs.places(E) == {(P1, b"a")}


def test_a_drop_under_way_leaves_a_place_shown_again_meanwhile() -> None:
    """An invalidation may wait long for a parent's lock; until it returns the place
    stays on record, and if the kernel was shown the place again meanwhile, it stays."""
    dirs = DirPlaces()
    dirs.place(D, (P1, b"a"))
    mark = dirs.mark()
    dirs.place(D, (P1, b"a"))  # a lookup while the invalidation was blocked
    dirs.dropped((P1, b"a"), mark)
    assert dirs.places(D) == {(P1, b"a")}
    mark = dirs.mark()
    dirs.dropped((P1, b"a"), mark)
    assert dirs.places(D) == set()
