"""Command line of the Raft simulator.

    python -m kvfs.raftsim --seed 12345 [-v]            one seed (-v: its step trace)
    python -m kvfs.raftsim --seeds 20000 [--start S] [--jobs 2]

A range prints progress, the total wall time and a summary, and for every failing seed the
one command that replays it; the exit status is 1 if any seed violated an invariant.  Only
this entry point prints, reads the clock and starts processes: the simulator is pure.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from kvfs.raftsim.world import Result, run_seed


def replay_command(seed: int) -> str:
    return f"python -m kvfs.raftsim --seed {seed} -v"


def _run_chunk(seeds: range) -> list[tuple[int, str | None, int]]:
    """(seed, violation text or None, steps) per seed."""
    out = []
    for seed in seeds:
        r: Result = run_seed(seed)
        out.append((seed, str(r.violation) if r.violation else None,
                    r.stats.steps + r.stats.rounds))
    return out


def run_one(seed: int, verbose: bool) -> int:
    def trace(line: str) -> None:
        print(line)

    started = time.monotonic()
    r = run_seed(seed, trace if verbose else None)
    print(f"seed {seed}: {r.params.describe()}")
    print(f"  {r.stats}")
    print(f"  {time.monotonic() - started:.2f}s")
    if r.violation is not None:
        print(f"VIOLATION {r.violation}")
        print(f"replay: {replay_command(seed)}")
        return 1
    print("ok")
    return 0


def run_range(start: int, count: int, jobs: int, chunk: int = 50) -> int:
    started = time.monotonic()
    chunks = [range(s, min(s + chunk, start + count)) for s in range(start, start + count, chunk)]
    violations: list[tuple[int, str]] = []
    done = 0
    steps = 0
    last_report = started

    def take(results: list[tuple[int, str | None, int]]) -> None:
        nonlocal done, steps, last_report
        for seed, violation, n in results:
            done += 1
            steps += n
            if violation is not None:
                violations.append((seed, violation))
                print(f"VIOLATION {violation}\nreplay: {replay_command(seed)}", flush=True)
        now = time.monotonic()
        if now - last_report >= 30 or done == count:
            last_report = now
            print(f"{done}/{count} seeds, {len(violations)} violations, "
                  f"{now - started:.0f}s", flush=True)

    if jobs <= 1:
        for c in chunks:
            take(_run_chunk(c))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for results in pool.map(_run_chunk, chunks):
                take(results)
    wall = time.monotonic() - started
    print(f"seeds {start}..{start + count - 1}: {count} run, {len(violations)} violations; "
          f"{steps} steps; wall time {wall:.1f}s with {jobs} job(s)")
    for seed, _ in violations:
        print(f"replay: {replay_command(seed)}")
    return 1 if violations else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvfs.raftsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run this one seed")
    which.add_argument("--seeds", type=int, help="run this many seeds from --start")
    parser.add_argument("--start", type=int, default=0, help="first seed of a range")
    parser.add_argument("--jobs", type=int, default=1, help="processes for a range")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the step trace of a single seed")
    args = parser.parse_args(argv)
    if args.seed is not None:
        return run_one(args.seed, args.verbose)
    return run_range(args.start, args.seeds, max(1, args.jobs))


if __name__ == "__main__":
    sys.exit(main())
