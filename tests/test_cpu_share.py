"""The server's share of the CPU: default thread count from the physical cores, and OpenMP
threads that sleep while they wait, set before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lsp_server.cpu_share import cores_in, default_threads, prepare_openmp


def cpuinfo(*processors: tuple[int, int, int]) -> str:
    """A /proc/cpuinfo text of (processor, physical id, core id) entries."""
    return "\n\n".join(
        f"processor\t: {n}\nvendor_id\t: AuthenticAMD\nphysical id\t: {package}\n"
        f"core id\t\t: {core}\nflags\t\t: fpu avx2 fma" for n, package, core in processors
    ) + "\n\n"


def test_hardware_threads_of_one_core_count_once() -> None:
    smt = cpuinfo((0, 0, 0), (1, 0, 1), (2, 0, 0), (3, 0, 1))  # 2 cores, 2 threads each
    assert cores_in(smt) == 2
    two_packages = cpuinfo((0, 0, 0), (1, 1, 0))  # core 0 of two packages
    assert cores_in(two_packages) == 2


def test_only_the_processors_this_process_may_use_count() -> None:
    eight = cpuinfo(*[(n, 0, n) for n in range(8)])
    assert cores_in(eight) == 8
    assert cores_in(eight, allowed={0, 1, 2}) == 3


def test_cpuinfo_without_topology_counts_processors() -> None:
    assert cores_in("processor\t: 0\n\nprocessor\t: 1\n\n") == 2


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_default_threads_leave_half_the_cores_to_the_rest_of_the_machine(
    cores: int, threads: int
) -> None:
    assert default_threads(cores) == threads


def test_openmp_threads_sleep_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    prepare_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    prepare_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_command_line_module_does_not_import_torch() -> None:
    """cli.main sets OMP_WAIT_POLICY before it imports the engine: OpenMP reads it once, when
    torch loads, so importing the command line must not load torch."""
    code = "import sys, lsp_server.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
