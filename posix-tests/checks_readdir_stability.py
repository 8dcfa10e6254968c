"""readdir while the directory changes: no entry twice, no untouched entry skipped."""
import os

from lib import check, touch

N = 1500


def _names(prefix, n):
    return [f"{prefix}-{i:05d}-{'x' * 40}" for i in range(n)]


def _fill(d, names):
    for n in names:
        touch(os.path.join(d, n))


@check
def plain_listing(t):
    names = _names("e", N)
    _fill(t.dir, names)
    got = os.listdir(t.dir)
    t.eq(len(got), N, "number of entries listed")
    t.eq(sorted(got), sorted(names), "every entry listed exactly once")
    # getdents with a small buffer goes through many calls
    with os.scandir(t.dir) as it:
        seen = [e.name for e in it]
    t.eq(len(set(seen)), len(seen), "scandir returns no duplicates")
    # . and .. are there for readdir(3) users
    fd = os.open(t.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t.ok(os.stat(".", dir_fd=fd).st_ino == os.stat(t.dir).st_ino, "`.` resolves")
    finally:
        os.close(fd)


@check
def add_and_remove_while_listing(t):
    names = _names("orig", N)
    _fill(t.dir, names)
    removed, added = set(), set()
    seen = []
    step = 0
    with os.scandir(t.dir) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i % 50 == 49:
                # remove some not-yet-seen and some seen originals, add new names
                for j in range(5):
                    victim = names[(step * 97 + j * 13 + 7) % N]
                    if victim not in removed:
                        os.unlink(os.path.join(t.dir, victim))
                        removed.add(victim)
                for j in range(10):
                    n = f"new-{step:03d}-{j:02d}-{'y' * 40}"
                    touch(os.path.join(t.dir, n))
                    added.add(n)
                step += 1
    dups = len(seen) - len(set(seen))
    t.eq(dups, 0, "no entry returned twice while the directory changes")
    untouched = set(names) - removed
    missing = untouched - set(seen)
    t.ok(not missing, "every untouched entry is returned",
         f"{len(missing)} of {len(untouched)} skipped, e.g. {sorted(missing)[:2]}")
    bogus = set(seen) - set(names) - added
    t.ok(not bogus, "no entry that never existed is returned", str(sorted(bogus)[:3]))
    t.eq(sorted(os.listdir(t.dir)), sorted(untouched | added), "final listing")


@check
def delete_while_listing(t):
    """The rm -r pattern: unlink each entry as it is returned; one pass must see all."""
    names = _names("del", N)
    _fill(t.dir, names)
    seen = []
    with os.scandir(t.dir) as it:
        for e in it:
            seen.append(e.name)
            os.unlink(os.path.join(t.dir, e.name))
    t.eq(len(seen), N, "one pass of readdir+unlink visits every entry")
    t.eq(len(set(seen)), len(seen), "no duplicates while deleting")
    t.eq(os.listdir(t.dir), [], "directory empty after one pass")


@check
def rename_within_while_listing(t):
    names = _names("r", 600)
    _fill(t.dir, names)
    os.mkdir(t.p("elsewhere"), 0o755)
    seen = []
    moved = set()
    with os.scandir(t.dir) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i % 10 == 0 and e.name.startswith("r-"):
                os.rename(os.path.join(t.dir, e.name), os.path.join(t.p("elsewhere"), e.name))
                moved.add(e.name)
    t.eq(len(seen) - len(set(seen)), 0, "no duplicates while moving seen entries out")
    t.ok(set(names) <= set(seen), "all entries seen while moving seen entries out",
         f"{len(set(names) - set(seen))} skipped")
