"""Peak memory of a command and every process it starts, summed over them: what the machine holds at once.

Run: python docs/figures/tree_peak.py gemma-edge quickstart --out QS_FOLDER

`/usr/bin/time -v` reports the largest single process ("Maximum resident set size"), which undercounts a
command whose stages run in processes of their own beside their parent (`gemma-edge quickstart` does).
This samples the sum of RSS over the command's process tree every 0.1 s (from /proc) and prints the peak,
the moment it was reached and the wall time; the command's own output passes through.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def _tree_rss(root: int) -> int:
    """Bytes resident in `root` and all its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    start = time.perf_counter()
    proc = subprocess.Popen(sys.argv[1:])
    peak, when = 0, 0.0
    while proc.poll() is None:
        rss = _tree_rss(proc.pid)
        if rss > peak:
            peak, when = rss, time.perf_counter() - start
        time.sleep(0.1)
    wall = time.perf_counter() - start
    print(f"tree peak RSS {peak / 2**30:.2f} GiB ({peak / 1e9:.2f} GB) at {when:.0f} s of {wall:.0f} s; "
          f"exit {proc.returncode}", flush=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
