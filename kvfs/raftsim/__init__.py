"""A seeded, deterministic simulator of a kvfs Raft cluster, with safety and liveness checks.

``kvfs.raftsim.world`` builds the simulated world (hosts with disks that crash and tear
writes, a faulty network, clients) around :mod:`kvfs.raft` and drives it from one
``random.Random(seed)``; ``kvfs.raftsim.checker`` holds the invariants it checks after every
step; ``python -m kvfs.raftsim`` runs seeds and prints the command that replays a failure.

Pure like the core: standard library and ``kvfs.raft`` only, no I/O, clocks or threads
(only the command line in ``__main__`` prints, times and forks).
"""

from kvfs.raftsim.checker import Checker, DictLog, SafetyViolation
from kvfs.raftsim.world import LIVENESS_TIMEOUTS, Params, Result, World, run_seed

__all__ = ["LIVENESS_TIMEOUTS", "Checker", "DictLog", "Params", "Result", "SafetyViolation",
           "World", "run_seed"]
