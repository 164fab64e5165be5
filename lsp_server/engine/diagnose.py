"""The diagnostics model runner: secrets and personal data tagged over whole documents (again
from the first changed token after an edit) and Python functions scored for likely bugs."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cache.scanner import DocumentScanner
from model.heads import DIAGNOSTICS_DIR, DiagnosticsModel, load_tokenizer
from model.tagging import decode_entities
from model.tokenizer import Tokenizer

from . import findings_policy as policy

BUG_MEMO = 4096  # function scores remembered, by the SHA-256 of their text


@dataclass(frozen=True)
class Finding:
    """Characters [start, end) of a document flagged with a label and a probability."""

    start: int
    end: int
    label: str  # an entity type (KEY, PASSWORD, ...) or BUG
    score: float

    @property
    def code(self) -> str:
        return policy.finding_code(self.label)


class Diagnoser:
    """The diagnostics model with its per-document state; lives on the inference worker.
    The text of a finding never reaches a log or a message: findings carry offsets only."""

    def __init__(self, model: DiagnosticsModel, tok: Tokenizer, max_documents: int = 64) -> None:
        self.model = model
        self.tok = tok
        self.scanner = DocumentScanner(model, max_documents)
        self.bug_scores: OrderedDict[bytes, float] = OrderedDict()
        self.tokens_computed = 0
        self.functions_scored = 0

    @classmethod
    def load(cls, name: str) -> Diagnoser:
        folder = DIAGNOSTICS_DIR if name == "default" else Path(name).expanduser()
        return cls(DiagnosticsModel.from_pretrained(folder), load_tokenizer(folder))

    def thresholds(self, options: policy.ReportOptions) -> dict[str, float]:
        return policy.thresholds(self.model.settings.thresholds, self.model_types(), options)

    def model_types(self) -> list[str]:
        return list(dict.fromkeys(name[2:] for name in self.model.labels if name != "O"))

    def findings(self, uri: str, text: str, language_id: str, options: policy.ReportOptions,
                 cancelled: Callable[[], bool] = lambda: False) -> list[Finding] | None:
        """Everything the options ask for in `text`, sorted; None when cancelled part-way."""
        limits = self.thresholds(options)
        found: list[Finding] = []
        wanted = policy.reported_types(options)
        if wanted:
            ids, offsets = self.tok.encode_with_offsets(text, as_text=True)
            scan = self.scanner.scan(uri, ids, cancelled)
            if scan is None:
                return None
            self.tokens_computed += scan.computed
            found += [Finding(e.start, e.end, e.label, e.score)
                      for e in decode_entities(text, offsets, scan.probs, self.model.labels, limits)
                      if e.label in wanted]
        if policy.scores_functions(options, language_id):
            for start, end, function_text in policy.python_functions(text):
                if cancelled():
                    return None
                score = self.bug_probability(function_text)
                if score >= limits[policy.BUG]:
                    found.append(Finding(start, end, policy.BUG, score))
        return sorted(found, key=lambda f: (f.start, f.end, f.label))

    def bug_probability(self, function_text: str) -> float:
        key = hashlib.sha256(function_text.encode("utf-8", "surrogatepass")).digest()
        score = self.bug_scores.get(key)
        if score is None:
            score = self.model.bug_probability(self.tok.encode_text(function_text))
            self.functions_scored += 1
            self.bug_scores[key] = score
            if len(self.bug_scores) > BUG_MEMO:
                self.bug_scores.popitem(last=False)
        else:
            self.bug_scores.move_to_end(key)
        return score

    def forget(self, uri: str) -> None:
        self.scanner.drop(uri)
