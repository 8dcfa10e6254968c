"""How the fault suite counts the kernel's own ESTALE (tests/workloads.py): in episodes,
so one moved directory failing several walks at once counts once, and separate ones each
count."""

from __future__ import annotations

import errno

from workloads import KERNEL_ESTALE_EPISODE, Op, stale_episodes


def stale(start: float, end: float) -> Op:
    return Op("A", "random", "stat", "d/x", start, end, errno.ESTALE, "stat")


def test_failures_at_once_are_one_episode() -> None:
    # Four workers in 0.13 s, as the fault suite once met; given out of order.
    ops = [stale(10.05, 10.13), stale(10.0, 10.02), stale(10.03, 10.04), stale(10.1, 10.11)]
    assert stale_episodes(ops) == 1


def test_failures_apart_are_separate_episodes() -> None:
    gap = KERNEL_ESTALE_EPISODE * 2
    ops = [stale(1.0, 1.1), stale(1.1 + gap, 1.2 + gap), stale(5.0 + gap, 5.1 + gap)]
    assert stale_episodes(ops) == 3


def test_an_episode_lasts_while_failures_keep_coming() -> None:
    step = KERNEL_ESTALE_EPISODE * 0.9
    ops = [stale(i * step, i * step + 0.01) for i in range(10)]
    assert stale_episodes(ops) == 1
    assert stale_episodes([]) == 0
