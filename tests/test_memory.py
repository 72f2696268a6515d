"""glibc's heap keeps freed pages; `large_allocations_mapped` gives large blocks pages of their own."""

import subprocess
import sys

SCRIPT = """
import torch
from gemma_edge.model.memory import large_allocations_mapped

def anon_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) / 1024

def retained_mib():
    before = anon_mib()
    blocks = [torch.ones(4 << 20) for _ in range(3)]  # 3 x 16 MiB
    del blocks
    return anon_mib() - before

x = torch.ones(30 << 18)  # freeing a mapped 30 MiB block raises glibc's mmap threshold to 30 MiB
del x
print(retained_mib())
with large_allocations_mapped():
    print(retained_mib())
"""


def test_large_allocations_mapped_return_their_pages_when_freed():
    """In a fresh process (a known heap): once glibc has raised its threshold, 16 MiB blocks come from the heap
    and their 48 MiB stay resident after they are freed; inside the block they are mapped and returned."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    heap, mapped = map(float, out)
    assert heap > 40 and mapped < 4
