"""Incremental tagging of whole documents for diagnostics: per open document, each window's
ids, KV buffers and label probabilities, run again only from the first changed token."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from model import KVCache
from model.heads import DiagnosticsModel, Window, windows

from .prefix import longest_common_prefix

HEADROOM = 256  # room for typing before a window's buffers grow


@dataclass
class WindowState:
    window: Window
    ids: list[int]
    kv: KVCache
    probs: torch.Tensor  # (len(ids), num_labels), float32 on the CPU


@dataclass(frozen=True)
class Scan:
    """Label probabilities of every token of the document, and the work it took."""

    probs: torch.Tensor  # (T, num_labels)
    reused: int  # tokens whose probabilities came from the entry
    computed: int  # tokens the backbone ran now


class DocumentScanner:
    """Per-document tagging state under a least-recently-used limit on documents.

    The backbone is causal, so after an edit a window's tokens before the first changed one
    keep their probabilities: only the rest is run again. Windows after an edit that shifts
    tokens start from scratch (their ids moved). Windows overlap by half (model.heads.windows).
    """

    def __init__(self, model: DiagnosticsModel, max_documents: int = 64) -> None:
        if max_documents < 1:
            raise ValueError(f"max_documents must be at least 1, got {max_documents}")
        self.model = model
        self.max_documents = max_documents
        self.entries: OrderedDict[str, list[WindowState]] = OrderedDict()

    def scan(self, uri: str, ids: Sequence[int],
             cancelled: Callable[[], bool] = lambda: False) -> Scan | None:
        """Probabilities for `ids`, the document's current tokens, reusing what still holds.
        `cancelled` is polled between windows: then the windows done so far are kept (a long
        document's first scan goes on from there next time) and None is returned."""
        # Popped first: if the model fails half-way, half-written buffers are not kept.
        old = self.entries.pop(uri, [])
        states: list[WindowState] = []
        reused = computed = 0
        for k, window in enumerate(windows(len(ids), self.model.tag_window)):
            if k and cancelled():
                self.keep(uri, states)
                return None
            previous = old[k] if k < len(old) and old[k].window.start == window.start else None
            state, kept = self.bring_up_to_date(window, list(ids[window.start:window.end]),
                                                previous)
            states.append(state)
            reused += min(max(0, kept - (window.owned_from - window.start)),
                          window.owned_to - window.owned_from)
            computed += len(state.ids) - kept
        self.keep(uri, states)
        probs = [s.probs[s.window.owned_from - s.window.start : s.window.owned_to - s.window.start]
                 for s in states]
        joined = torch.cat(probs) if probs else torch.zeros(0, len(self.model.labels))
        return Scan(joined, reused, computed)

    def keep(self, uri: str, states: list[WindowState]) -> None:
        self.entries[uri] = states
        while len(self.entries) > self.max_documents:
            self.entries.popitem(last=False)

    def bring_up_to_date(self, window: Window, ids: list[int], previous: WindowState | None
                         ) -> tuple[WindowState, int]:
        """The window's state for `ids` and how many leading tokens were kept."""
        kept = 0 if previous is None else longest_common_prefix(previous.ids, ids)
        if previous is None or kept == 0:
            config = self.model.config
            kv = KVCache(config, 1, min(config.n_positions, len(ids) + HEADROOM),
                         dtype=self.model.dtype, device=self.model.device)
            probs = torch.zeros(0, len(self.model.labels))
            kept = 0
        else:
            kv, probs = previous.kv, previous.probs[:kept]
            kv.truncate(kept)
        if kept < len(ids):
            run = torch.tensor([ids[kept:]], device=kv.device)  # (1, T)
            with torch.inference_mode():
                hidden = self.model.hidden(run, kv)[0]
                new = self.model.tag_logits(hidden).float().softmax(-1).cpu()
            probs = torch.cat([probs, new])
        return WindowState(window, ids, kv, probs), kept

    def drop(self, uri: str) -> None:
        self.entries.pop(uri, None)

    @property
    def nbytes(self) -> int:
        return sum(s.kv.nbytes + s.probs.numel() * 4 for v in self.entries.values() for s in v)

