"""The detect-secrets baseline for the secrets tagger: the lines it flags in labelled samples, and
line-level precision / recall against the samples' spans.

detect-secrets (a test and evaluation dependency only) runs in-process with its default plugins
and filters; each sample is written to a file named as such a file usually is, because several
plugins and transformers choose their rules by the file's extension.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from model.train.secrets_data import Sample

FILENAMES = {
    "python": "settings.py",
    "yaml": "docker-compose.yml",
    "json": "config.json",
    "dotenv": ".env",
    "shellscript": "deploy.sh",
    "javascript": "config.js",
    "typescript": "config.ts",
    "ini": "settings.ini",
    "toml": "config.toml",
    "dockerfile": "Dockerfile",
}


def filename_for(language: str) -> str:
    return FILENAMES.get(language, "document.txt")


def flagged_lines(samples: Sequence[Sample]) -> list[set[int]]:
    """For each sample, the 0-based numbers of the lines detect-secrets reports a secret on."""
    from detect_secrets.core.secrets_collection import SecretsCollection
    from detect_secrets.settings import default_settings

    results: list[set[int]] = []
    with tempfile.TemporaryDirectory(prefix="secrets-baseline-") as root, default_settings():
        for number, sample in enumerate(samples):
            folder = os.path.join(root, str(number))
            os.mkdir(folder)
            path = os.path.join(folder, filename_for(sample.language))
            with open(path, "w", encoding="utf-8") as out:
                out.write(sample.text)
            collection = SecretsCollection()
            collection.scan_file(path)
            results.append({s.line_number - 1 for found in collection.data.values() for s in found})
    return results


def line_truth(sample: Sample, labels: Sequence[str] = ("KEY", "PASSWORD")) -> set[int]:
    """0-based numbers of the lines that a span with one of labels touches (a private key's span
    covers all its lines)."""
    lines: set[int] = set()
    for span in sample.spans:
        if span.label in labels:
            first = sample.text.count("\n", 0, span.start)
            lines.update(range(first, first + sample.text.count("\n", span.start, span.end) + 1))
    return lines


def line_scores(pred_lines: Sequence[set[int]], true_lines: Sequence[set[int]]) -> dict[str, float]:
    """Precision, recall and F1 over all samples' lines (0.0 where nothing was predicted or true),
    with the counts tp, fp and fn."""
    if len(pred_lines) != len(true_lines):
        raise ValueError(f"{len(pred_lines)} predicted line sets for {len(true_lines)} samples")
    tp = sum(len(p & t) for p, t in zip(pred_lines, true_lines, strict=True))
    fp = sum(len(p - t) for p, t in zip(pred_lines, true_lines, strict=True))
    fn = sum(len(t - p) for p, t in zip(pred_lines, true_lines, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
