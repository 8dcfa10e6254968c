"""Where the kernel may hold each directory's dentry, so a moved one can be dropped first.

A directory has one dentry.  When a lookup (or a readdirplus entry) shows the kernel a
directory it holds under another parent -- another mount moved it, and the watch has not
dropped the old name yet -- the kernel must move its dentry, and for that it needs the
filesystem's rename lock and the old parent's lock, which it only *tries* to take: with a
rename across directories under way on this mount (which holds that lock while it looks
names up), the lookup fails with ESTALE.  So the FUSE layer drops the old name before it
replies (:meth:`KvfsOperations.lookup <kvfs.fuse.ops.KvfsOperations.lookup>`).

This is the record of where that may be.  It keeps a *set* of places per directory, not
the last one: a reply does not say whether the kernel accepted it, and when it refused
(ESTALE: the old dentry was still in use), the directory is still where it was -- a record
that moved on with the reply would never drop that place, and every later lookup of the
directory inside a rename would fail the same way.  A place leaves the set only when the
kernel has moved or dropped that dentry for certain: this mount renamed it, the name was
invalidated, the kernel forgot the inode, or the new place shares the old one's parent
(which the kernel moves without either lock).  Spare places cost a needless
invalidation at most.
"""

from __future__ import annotations

Place = tuple[int, bytes]  # (parent inode, name)


class DirPlaces:
    """Places the kernel may hold each directory inode at (see module docstring).

    Invariant: ``ino in _at[place-owner]`` exactly when ``_named[place] == ino``; no
    directory has an empty set.
    """

    def __init__(self) -> None:
        self._at: dict[int, set[Place]] = {}
        self._named: dict[Place, int] = {}
        self._shown = 0  # counts place(): a drop started before a showing leaves it be
        self._shown_at: dict[Place, int] = {}

    def places(self, ino: int) -> set[Place]:
        """Where the kernel may hold directory ``ino`` (a copy)."""
        return set(self._at.get(ino, ()))

    def elsewhere(self, ino: int, place: Place) -> list[Place]:
        """Places of ``ino`` under other parents than ``place``'s: what must be dropped
        before the kernel is shown ``ino`` at ``place``."""
        return sorted(p for p in self._at.get(ino, ()) if p[0] != place[0])

    def place(self, ino: int, place: Place) -> None:
        """The kernel was shown directory ``ino`` at ``place``.  Any place under the same
        parent is gone (the kernel moves that dentry itself)."""
        for p in [p for p in self._at.get(ino, ()) if p[0] == place[0] and p != place]:
            self._unname(ino, p)
        previous = self._named.get(place)
        if previous is not None and previous != ino:
            self._unname(previous, place)  # the name now holds another directory
        self._at.setdefault(ino, set()).add(place)
        self._named[place] = ino
        self._shown += 1
        self._shown_at[place] = self._shown

    def mark(self) -> int:
        """Taken before an invalidation starts: what :meth:`dropped` compares with."""
        return self._shown

    def dropped(self, place: Place, mark: int | None = None) -> None:
        """The kernel no longer holds anything at ``place``: an invalidation of it that
        started at ``mark`` returned.  A place shown to the kernel again since stays."""
        ino = self._named.get(place)
        if ino is None or (mark is not None and self._shown_at.get(place, 0) > mark):
            return
        self._unname(ino, place)

    def forget(self, ino: int) -> None:
        """The kernel forgot inode ``ino``: it holds no dentry of it."""
        for p in self._at.pop(ino, set()):
            if self._named.get(p) == ino:
                del self._named[p]
                self._shown_at.pop(p, None)

    def renamed(self, old: Place, new: Place, *, exchange: bool) -> None:
        """This mount renamed ``old`` to ``new``: the kernel moved its dentries itself."""
        moved, other = self._named.get(old), self._named.get(new)
        if moved is not None:
            self._unname(moved, old)
        if other is not None:
            self._unname(other, new)
        if moved is not None:
            self.place(moved, new)
        if other is not None and exchange:
            self.place(other, old)

    def _unname(self, ino: int, place: Place) -> None:
        here = self._at.get(ino)
        if here is not None:
            here.discard(place)
            if not here:
                del self._at[ino]
        if self._named.get(place) == ino:
            del self._named[place]
            self._shown_at.pop(place, None)
