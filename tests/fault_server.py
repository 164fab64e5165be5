"""Runs the language server with faults injected into generation, for the robustness tests:
`python tests/fault_server.py [server arguments]` with GPTBIGCODE_TEST_FAULTS set to a
comma-separated plan. The n-th generation, after its prompt's forward pass, raises the n-th
fault: "error" a RuntimeError, "oom" torch.OutOfMemoryError, "" nothing."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

FAULTS_VARIABLE = "GPTBIGCODE_TEST_FAULTS"


class InjectedFaults:
    """The plan of faults, one per generation."""

    KINDS = ("", "error", "oom")

    def __init__(self, plan: Iterable[str] = ()) -> None:
        self.plan = deque(plan)
        unknown = [fault for fault in self.plan if fault not in self.KINDS]
        if unknown:
            raise ValueError(
                f"{FAULTS_VARIABLE}: unknown fault(s) {unknown}; expected a comma-separated "
                "list of 'error', 'oom' or nothing"
            )

    @classmethod
    def from_environment(cls) -> InjectedFaults:
        value = os.environ.get(FAULTS_VARIABLE)
        return cls(value.split(",") if value else ())

    def next(self) -> None:
        fault = self.plan.popleft() if self.plan else ""
        if fault == "error":
            raise RuntimeError(f"injected fault ({FAULTS_VARIABLE})")
        if fault == "oom":
            raise torch.OutOfMemoryError(f"injected out of memory ({FAULTS_VARIABLE})")


def inject(faults: InjectedFaults) -> None:
    """Make every prompt's forward pass of the in-process backend raise the plan's next fault
    after it ran."""
    from lsp_server.engine.local import LocalBackend

    prefill = LocalBackend.prefill

    def faulty_prefill(self: LocalBackend, *args: Any, **kwargs: Any) -> Any:
        filled = prefill(self, *args, **kwargs)
        faults.next()
        return filled

    LocalBackend.prefill = faulty_prefill  # type: ignore[method-assign]


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    inject(InjectedFaults.from_environment())
    from lsp_server.cli import main as server_main

    return server_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
