#!/usr/bin/env python3
"""How fast this machine gives a process new memory (a benchmark, not a test).

Maps MB megabytes of anonymous memory (argument 1, default 1024), touches one byte of every 4 kB
page (optionally with MADV_HUGEPAGE first: the second argument `huge`) and prints the seconds and
GB/s of that first touch, then of writing the same pages again (warm). ROUNDS (argument 3, default
3) separate processes' worth of rounds run one after another. On a virtual machine whose host takes
freed memory back (free page reporting), the first touch of memory the host took back is far slower
than of memory freed a moment ago:

    python3 bench/fresh_memory.py 2048 huge 3
"""
import mmap
import sys
import time


def one(mb: int, huge: bool) -> None:
    n = mb << 20
    t0 = time.perf_counter()
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge and hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    for i in range(0, n, 4096):
        m[i] = 1
    t1 = time.perf_counter()
    for i in range(0, n, 4096):
        m[i] = 2
    t2 = time.perf_counter()
    m.close()
    print(f"{mb} MB{' huge' if huge else ''}: first touch {t1 - t0:.3f} s "
          f"({n / (t1 - t0) / 1e9:.2f} GB/s), again {t2 - t1:.3f} s")


def main() -> None:
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    huge = len(sys.argv) > 2 and sys.argv[2] == "huge"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    for _ in range(rounds):
        one(mb, huge)


if __name__ == "__main__":
    main()
