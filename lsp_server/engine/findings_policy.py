"""What the diagnostics report: the entity types each option covers, the thresholds in force,
and which Python functions the bug head scores, each finding placed on the function's name."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from model.functions import functions_of
from model.tagging import never_a_credential

__all__ = ["BUG", "PERSONAL_TYPES", "SECRET_TYPES", "finding_code", "never_a_credential",
           "python_functions", "reported_types", "scores_functions", "thresholds"]

BUG = "BUG"
SECRET_TYPES = frozenset({"KEY", "PASSWORD", "USERNAME"})
PERSONAL_TYPES = frozenset({"EMAIL", "IP_ADDRESS"})
DEFAULT_THRESHOLD = 0.5  # for a label the model was not calibrated for


class ReportOptions(Protocol):
    """The diagnostics options the engine reads (lsp_server.options.DiagnosticsOptions)."""

    @property
    def secrets(self) -> bool: ...

    @property
    def personal_data(self) -> bool: ...

    @property
    def bugs(self) -> bool: ...

    @property
    def secret_threshold(self) -> float | None: ...

    @property
    def personal_data_threshold(self) -> float | None: ...

    @property
    def bug_threshold(self) -> float | None: ...


def reported_types(options: ReportOptions) -> frozenset[str]:
    """The entity types the options ask for."""
    return (SECRET_TYPES if options.secrets else frozenset()) | (
        PERSONAL_TYPES if options.personal_data else frozenset())


def scores_functions(options: ReportOptions, language_id: str) -> bool:
    return options.bugs and language_id == "python"


def thresholds(calibrated: Mapping[str, float], types: Iterable[str], options: ReportOptions
               ) -> dict[str, float]:
    """Per label (each of `types` and BUG), the probability a finding needs: the options'
    threshold where one is set, else the model's calibrated one."""
    limits = dict(calibrated)
    for label in types:
        override = (options.secret_threshold if label in SECRET_TYPES
                    else options.personal_data_threshold)
        limits[label] = override if override is not None else limits.get(label, DEFAULT_THRESHOLD)
    if options.bug_threshold is not None:
        limits[BUG] = options.bug_threshold
    limits.setdefault(BUG, DEFAULT_THRESHOLD)
    return limits


def finding_code(label: str) -> str:
    """The diagnostic code of a label: bug/looks-wrong, secret/KEY, pii/EMAIL, ..."""
    if label == BUG:
        return "bug/looks-wrong"
    return f"{'secret' if label in SECRET_TYPES else 'pii'}/{label}"


def python_functions(text: str) -> list[tuple[int, int, str]]:
    """(start, end, dedented text) of each function the bug head was trained on: start..end is
    the name in its `def` line. Nothing while the file does not parse (mid-edit)."""
    try:
        functions = functions_of(text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    spans = []
    for fn in functions:
        line_start = len(fn.context)
        line_end = text.find("\n", line_start)
        header = text[line_start : len(text) if line_end < 0 else line_end]
        name = fn.name.rsplit(".", 1)[-1]
        found = re.search(rf"\bdef\s+({re.escape(name)})\b", header)
        if found is None:  # a decorator line comes first: find the def below it
            index = text.find(f"def {name}", line_start)
            start, end = (index + 4, index + 4 + len(name)) if index >= 0 else (line_start,
                                                                                  line_start)
        else:
            start, end = line_start + found.start(1), line_start + found.end(1)
        spans.append((start, end, fn.text))
    return spans
