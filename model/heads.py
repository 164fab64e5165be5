"""The diagnostics model: one GPTBigCode backbone with two heads, a BIO tagger over tokens
(secrets and personal data) and a scorer of whole functions ("looks like a bug")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint
from .kv_cache import KVCache
from .modeling import GPTBigCodeForTokenClassification
from .tagging import Entity, bio_labels, decode_entities
from .tokenizer import Tokenizer

DIAGNOSTICS_DIR = checkpoint.DEFAULT_MODEL_DIR / "diagnostics"
BUG_LABELS = ("looks_right", "looks_wrong")
# The tagger's window when config.json records none: the length of the documents the packaged
# heads were trained on (model/train/heads.py --max-doc-tokens). Positions past it were never
# trained, and a scan over them flags ordinary text.
DEFAULT_TAG_WINDOW = 512


class HeadsError(ValueError):
    """A diagnostics checkpoint that cannot be used, with the reason."""


@dataclass
class HeadSettings:
    """What config.json's "diagnostics" entry records beside the weights."""

    bug_labels: tuple[str, ...] = BUG_LABELS
    thresholds: dict[str, float] = field(default_factory=dict)  # per entity type, and "BUG"
    # A token appended to every function before scoring (the bug head reads its hidden state,
    # the same summary position whatever the function ends with); None: nothing appended.
    bug_end_token: int | None = None
    # Tokens the tagger reads at once: the longest training document (None: DEFAULT_TAG_WINDOW).
    tag_window: int | None = None
    training: dict[str, Any] = field(default_factory=dict)


class DiagnosticsModel(nn.Module):
    """Backbone + `classifier` (BIO tags) + `score` (bug likelihood), sharing one forward pass.

    On disk it is an ordinary GPTBigCodeForTokenClassification checkpoint folder whose weights
    also hold `score.weight`, the sequence-classification head of the same backbone; so
    transformers loads it as either class (`GPTBigCodeForSequenceClassification.from_pretrained(
    folder, num_labels=2)`) with no weights stored twice. The bug head's label names, the
    decision thresholds and the training summary live under `"diagnostics"` in config.json.
    """

    def __init__(self, tagger: GPTBigCodeForTokenClassification, settings: HeadSettings) -> None:
        super().__init__()
        self.tagger = tagger
        self.score = nn.Linear(tagger.config.n_embd, len(settings.bug_labels), bias=False)
        self.settings = settings

    @classmethod
    def fresh(cls, backbone_folder: str | Path, **load: Any) -> DiagnosticsModel:
        """Heads newly initialised on a causal-LM (or any GPTBigCode) checkpoint's backbone."""
        labels = bio_labels()
        tagger = GPTBigCodeForTokenClassification.from_pretrained(
            backbone_folder, num_labels=len(labels), **load
        )
        tagger.config.id2label = dict(enumerate(labels))
        model = cls(tagger, HeadSettings())
        tagger.init_weights(model.score)
        return model.to(tagger.dtype)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path = DIAGNOSTICS_DIR, *, dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> DiagnosticsModel:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise HeadsError(f"{folder}: no diagnostics model here (config.json missing)")
        settings = read_settings(folder)
        tagger = GPTBigCodeForTokenClassification.from_pretrained(
            folder, dtype=dtype, device=device
        )
        model = cls(tagger, settings)
        state = checkpoint.read_state_dict(folder)
        if "score.weight" not in state:
            raise HeadsError(f"{folder}: the weights have no score.weight (the bug head)")
        weight = state["score.weight"]
        if tuple(weight.shape) != tuple(model.score.weight.shape):
            raise HeadsError(
                f"{folder}: score.weight has shape {tuple(weight.shape)}, expected "
                f"{tuple(model.score.weight.shape)} for {len(settings.bug_labels)} bug labels"
            )
        model.score.weight.data = weight.to(tagger.dtype).to(tagger.device)
        return model.eval()

    def save_pretrained(self, folder: str | Path, *, dtype: torch.dtype | None = None) -> None:
        """Write config.json (with the "diagnostics" entry) and one safetensors file, the
        weights converted to `dtype` if given (the model itself is left as it is)."""
        folder = Path(folder)
        config = self.tagger.config
        config.extra["diagnostics"] = {
            "bug_labels": list(self.settings.bug_labels),
            "bug_end_token": self.settings.bug_end_token,
            "tag_window": self.settings.tag_window,
            "thresholds": self.settings.thresholds,
            "training": self.settings.training,
        }
        config.extra["architectures"] = [type(self.tagger).__name__]
        config.torch_dtype = str(dtype or self.dtype).removeprefix("torch.")
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        state = {k: v.detach() for k, v in self.tagger.state_dict().items()}
        state.pop("lm_head.weight", None)
        state["score.weight"] = self.score.weight.detach()
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        checkpoint.write_state_dict(state, folder)

    @property
    def config(self) -> Any:
        return self.tagger.config

    @property
    def labels(self) -> list[str]:
        assert self.config.id2label is not None
        return [self.config.id2label[i] for i in range(len(self.config.id2label))]

    @property
    def tag_window(self) -> int:
        """Tokens per tagging window: the training documents' length, within n_positions."""
        window = self.settings.tag_window or DEFAULT_TAG_WINDOW
        return min(window, self.config.n_positions)

    @property
    def device(self) -> torch.device:
        return self.tagger.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tagger.dtype

    def hidden(
        self, ids: torch.Tensor, kv: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (B, T, n_embd) of the new tokens; extends `kv` when given."""
        out = self.tagger.transformer(
            ids, past_key_values=kv, attention_mask=attention_mask, use_cache=kv is not None
        )
        return out.last_hidden_state

    def tag_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tagger.classifier(self.tagger.dropout(hidden))  # (..., num_labels)

    def bug_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden)  # (..., len(bug_labels))

    def bug_input(self, ids: list[int]) -> list[int]:
        """A function's token ids as the bug head reads them (with the end token, if any)."""
        end = self.settings.bug_end_token
        return ids if end is None else [*ids, end]

    @torch.inference_mode()
    def bug_probability(self, ids: list[int]) -> float:
        """P(looks_wrong) for one function's token ids, from its last token's hidden state."""
        if not ids:
            raise ValueError("no tokens to score")
        ids = self.bug_input(ids)
        limit = self.config.n_positions
        window = torch.tensor([ids[-limit:]], device=self.device)  # (1, T)
        logits = self.bug_logits(self.hidden(window)[0, -1]).float()
        return float(logits.softmax(-1)[-1])


def read_settings(folder: Path) -> HeadSettings:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadsError(f"{folder / 'config.json'}: unreadable ({exc})") from None
    entry = raw.get("diagnostics")
    if not isinstance(entry, dict):
        raise HeadsError(f"{folder / 'config.json'}: no \"diagnostics\" entry; not a diagnostics "
                         "model (train one with python -m model.train.heads)")
    labels = entry.get("bug_labels", list(BUG_LABELS))
    thresholds = entry.get("thresholds", {})
    if not (isinstance(labels, list) and len(labels) >= 2
            and all(isinstance(x, str) for x in labels)):
        raise HeadsError(f"{folder}: diagnostics.bug_labels must list at least two names")
    if not (isinstance(thresholds, dict)
            and all(isinstance(v, int | float) and 0 <= v <= 1 for v in thresholds.values())):
        raise HeadsError(f"{folder}: diagnostics.thresholds must map labels to numbers in [0, 1]")
    end = entry.get("bug_end_token")
    if end is not None and not isinstance(end, int):
        raise HeadsError(f"{folder}: diagnostics.bug_end_token must be a token id or null")
    window = entry.get("tag_window")
    if window is not None and not (isinstance(window, int) and window >= MIN_TAG_WINDOW):
        raise HeadsError(f"{folder}: diagnostics.tag_window must be a token count of at least "
                         f"{MIN_TAG_WINDOW}, or null")
    return HeadSettings(tuple(labels), {str(k): float(v) for k, v in thresholds.items()},
                        end, window, dict(entry.get("training", {})))


def load_tokenizer(folder: str | Path = DIAGNOSTICS_DIR) -> Tokenizer:
    return Tokenizer.from_pretrained(folder)


# -- whole-document tagging ------------------------------------------------------------------

MIN_TAG_WINDOW = 8


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) run together; tags of [owned_from, owned_to) are taken from this run."""

    start: int
    end: int
    owned_from: int
    owned_to: int


def windows(n_tokens: int, size: int) -> list[Window]:
    """Cover n_tokens with runs of at most `size` tokens, one starting every half window. Each
    token's tags come from the run where it sits nearest the middle, at positions [size/4,
    3*size/4) (the first run's from 0, the last run's to the end): so every token has at least
    a quarter window of left context and none is judged at a window's far end, at positions the
    tagger met least in training."""
    if size < MIN_TAG_WINDOW:
        raise ValueError(f"window size {size} is below the minimum {MIN_TAG_WINDOW}")
    quarter = size // 4
    stride = size - 2 * quarter  # owned ranges of neighbours meet exactly
    plan: list[Window] = []
    start = 0
    while True:
        last = n_tokens <= start + size - quarter
        plan.append(Window(start, min(n_tokens, start + size), 0 if start == 0 else start + quarter,
                           n_tokens if last else start + size - quarter))
        if last:
            return plan
        start += stride


@torch.inference_mode()
def tag_probabilities(model: DiagnosticsModel, ids: list[int]) -> torch.Tensor:
    """(T, num_labels) label probabilities of every token of a document, window by window."""
    if not ids:
        return torch.zeros(0, len(model.labels))
    rows = []
    for w in windows(len(ids), model.tag_window):
        run = torch.tensor([ids[w.start : w.end]], device=model.device)  # (1, W)
        hidden = model.hidden(run)[0, w.owned_from - w.start : w.owned_to - w.start]
        rows.append(model.tag_logits(hidden).float().softmax(-1))
    return torch.cat(rows)  # (T, num_labels)


def find_entities(
    model: DiagnosticsModel, tok: Tokenizer, text: str,
    thresholds: dict[str, float] | None = None,
) -> list[Entity]:
    """Secrets and personal data in text, as character spans (one full pass)."""
    ids, offsets = tok.encode_with_offsets(text, as_text=True)
    probs = tag_probabilities(model, ids)
    limits = model.settings.thresholds if thresholds is None else thresholds
    return decode_entities(text, offsets, probs, model.labels, limits)
