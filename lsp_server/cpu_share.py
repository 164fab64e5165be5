"""How the server shares the CPU with the editor and everything else on the machine: how many
threads the model computes with by default, and OpenMP threads that sleep rather than spin
while they wait (set before torch is imported)."""

from __future__ import annotations

import os
from pathlib import Path

# At most this many threads by default: a small model's decode step gains little beyond it, and
# every thread is one the editor, the browser or the compiler beside us does not get.
MAX_DEFAULT_THREADS = 4


def physical_cores() -> int:
    """Cores (not hardware threads) this process may run on; the allowed CPU count where
    /proc/cpuinfo is not readable."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    count = len(allowed) if allowed is not None else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return count
    return cores_in(text, allowed) or count


def cores_in(cpuinfo: str, allowed: set[int] | None = None) -> int:
    """Distinct (package, core) pairs among the `allowed` processors of a /proc/cpuinfo text:
    two hardware threads of one core count once."""
    cores: set[tuple[str, str]] = set()
    for block in cpuinfo.split("\n\n"):
        pairs = (line.partition(":") for line in block.splitlines())
        fields = {key.strip(): value.strip() for key, _, value in pairs}
        if "processor" not in fields:
            continue
        if allowed is not None and int(fields["processor"]) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return len(cores)


def default_threads(cores: int | None = None) -> int:
    """Half the physical cores, between 1 and MAX_DEFAULT_THREADS: a background service leaves
    the other half to the editor and what runs beside it (torch's own default takes them all,
    and on a busy 2-core machine two threads made a suggestion 10x slower than one)."""
    cores = physical_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT_THREADS, cores // 2))


def prepare_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the
    environment says otherwise. Must run before torch is imported: OpenMP reads it once."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
