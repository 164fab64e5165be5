"""Text <-> token ids for GPTBigCode checkpoints: a typed wrapper over a Hugging Face tokenizer.json
with batching, character offsets, FIM token lookup and raw-byte decoding for byte-level BPE."""

from __future__ import annotations

import json
import os
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import tokenizers
import torch

from .checkpoint import CheckpointError, resolve_checkpoint

ENDOFTEXT = "<|endoftext|>"

# (prefix, middle, suffix, pad) spellings, tried in this order.
FIM_SPELLINGS = (
    ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"),  # StarCoder
    ("<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"),  # SantaCoder
)

PADDING_CHOICES = (False, True, "longest", "max_length")
# encode_text_after re-encodes in full when the reusable part is shorter than this.
REUSE_MIN_CHARS = 256
SIDES = ("left", "right")

Offsets = list[tuple[int, int]]
Row = dict[str, list[Any]]  # one text's input_ids, attention_mask[, offset_mapping]


class TokenizerError(ValueError):
    """A tokenizer file that cannot be read, or text, ids or options this tokenizer cannot take."""


class FimTokens(NamedTuple):
    """Ids of the fill-in-the-middle sentinels; `pad` is None when the vocabulary has none."""

    prefix: int
    middle: int
    suffix: int
    pad: int | None


class FimStrings(NamedTuple):
    """The texts of the fill-in-the-middle sentinels, as they appear in a prompt."""

    prefix: str
    middle: str
    suffix: str
    pad: str | None


def _byte_to_char_table() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves; the other 68
    (controls, space, DEL, NBSP, soft hyphen) move to U+0100.. so every token is visible text."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


BYTE_TO_CHAR = _byte_to_char_table()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _token_text_to_bytes(token: str) -> bytes:
    """The bytes a token stands for, by the rule of tokenizers' ByteLevel decoder: a token written
    wholly in the byte alphabet maps char by char; any other (an added token) is its own UTF-8."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def _load_backend(path: Path) -> tokenizers.Tokenizer:
    if not path.is_file():
        raise TokenizerError(f"{path}: no such file (a Hugging Face tokenizer.json is needed)")
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception for every parse problem
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({err})") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"{path}: cannot read JSON ({err})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _special_token_texts(folder: Path) -> dict[str, str]:
    """eos/bos/pad token texts from tokenizer_config.json, overridden by special_tokens_map.json
    (the order transformers applies them). Values are strings or serialized AddedToken dicts."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = _read_json_object(path)
        for role in ("eos_token", "bos_token", "pad_token"):
            value = data.get(role)
            if isinstance(value, dict):
                value = value.get("content")
            if value is None:
                continue
            if not isinstance(value, str):
                raise TokenizerError(f"{path}: {role} must be a string, got {value!r}")
            found[role] = value
    return found


def _uses_byte_level_decoder(backend: tokenizers.Tokenizer) -> bool:
    if backend.decoder is None:
        return False
    state = json.loads(backend.decoder.__getstate__())
    parts = state.get("decoders", [state]) if state.get("type") == "Sequence" else [state]
    return any(part.get("type") == "ByteLevel" for part in parts)


def _splits_before_line_breaks(backend: tokenizers.Tokenizer) -> bool:
    """Whether every line break that follows a non-space character starts a pre-token, so
    that encoding the text on either side of it apart gives the ids of the whole: true of
    byte-level BPE with the GPT-2 split pattern (optionally after splitting digits), no
    normalizer, and no added token that could span a line break."""
    state = json.loads(backend.to_str())
    if state.get("normalizer") is not None or (state.get("model") or {}).get("type") != "BPE":
        return False
    pre = state.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds not in (["ByteLevel"], ["Digits", "ByteLevel"]):
        return False
    level = parts[-1]
    if not level.get("use_regex", True) or level.get("add_prefix_space", False):
        return False
    return not any("\n" in token.get("content", "") for token in state.get("added_tokens", []))


def _find_fim(backend: tokenizers.Tokenizer) -> FimStrings | None:
    for prefix, middle, suffix, pad in FIM_SPELLINGS:
        if all(backend.token_to_id(t) is not None for t in (prefix, middle, suffix)):
            has_pad = backend.token_to_id(pad) is not None
            return FimStrings(prefix, middle, suffix, pad if has_pad else None)
    return None


def _char_spans(text: str, pieces: Sequence[bytes]) -> Offsets:
    """Character span of each piece of text's UTF-8, pieces given in order. A piece holding part of
    a multi-byte character spans that whole character, so pieces of one character share a span."""
    if text.isascii():
        ends = list(accumulate(len(p) for p in pieces))
        return [(end - len(p), end) for p, end in zip(pieces, ends, strict=True)]
    # char_starts[i] = byte offset where character i begins.
    char_starts = [0, *accumulate(len(c.encode("utf-8")) for c in text)][:-1]
    spans = []
    byte_pos = 0
    for piece in pieces:
        first = bisect_right(char_starts, byte_pos) - 1
        byte_pos += len(piece)
        spans.append((first, bisect_right(char_starts, byte_pos - 1)))
    return spans


def _cut(row: list[Any], max_length: int, side: str) -> list[Any]:
    return row[:max_length] if side == "right" else row[max(0, len(row) - max_length) :]


def _pad(row: list[Any], length: int, value: Any, side: str) -> list[Any]:
    fill = [value] * (length - len(row))
    return row + fill if side == "right" else fill + row


class Tokenizer:
    """A Hugging Face `tokenizers.Tokenizer` with the calls this project needs.

    `encode` never adds special tokens (no BOS/EOS); special tokens written in the text, such as
    "<|endoftext|>" or "<fim_prefix>", do encode as their single ids. When `pad_token_id` is None,
    padding uses `eos_token_id`, as GPTBigCode checkpoints ship without a pad token.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        eos_token: str | None = None,
        bos_token: str | None = None,
        pad_token: str | None = None,
        source: str = "<in memory>",
    ) -> None:
        """eos_token defaults to "<|endoftext|>" when the vocabulary has it; bos_token to eos_token;
        pad_token stays None unless given."""
        self.backend = backend
        self.source = source
        if eos_token is None and backend.token_to_id(ENDOFTEXT) is not None:
            eos_token = ENDOFTEXT
        self.eos_token = eos_token
        self.bos_token = bos_token if bos_token is not None else eos_token
        self.pad_token = pad_token
        self.eos_token_id = self._id_of(self.eos_token, "eos_token")
        self.bos_token_id = self._id_of(self.bos_token, "bos_token")
        self.pad_token_id = self._id_of(self.pad_token, "pad_token")
        # Largest id + 1, so that every id (added tokens included) indexes an embedding row.
        self.vocab_size = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        self.fim_strings = _find_fim(backend)
        self.fim = self._fim_ids(self.fim_strings)
        self.special_ids = self._collect_special_ids()
        self._byte_level = _uses_byte_level_decoder(backend)
        self._bytes_of_id: dict[int, bytes] = {}
        self._line_break_cuts = self._byte_level and _splits_before_line_breaks(backend)
        self._text_backend: tokenizers.Tokenizer | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json; special tokens take their defaults (see __init__)."""
        path = Path(path)
        return cls(_load_backend(path), source=str(path))

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike[str], *, revision: str | None = None
    ) -> Tokenizer:
        """Load a checkpoint's tokenizer.json, with eos/bos/pad from tokenizer_config.json and
        special_tokens_map.json when present. The checkpoint is found as the model's
        from_pretrained finds it: a folder, "default" (the packaged checkpoint) or a model id
        in the local Hugging Face cache (`revision` for ids only); nothing is downloaded."""
        try:
            folder = resolve_checkpoint(path_or_id, revision=revision)
        except CheckpointError as error:
            raise TokenizerError(f"{error} (want a folder with tokenizer.json)") from None
        path = folder / "tokenizer.json"
        return cls(_load_backend(path), source=str(path), **_special_token_texts(folder))

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"

    def _id_of(self, token: str | None, role: str) -> int | None:
        if token is None:
            return None
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.source}: {role} {token!r} is not in the vocabulary")
        return token_id

    def _fim_ids(self, strings: FimStrings | None) -> FimTokens | None:
        if strings is None:
            return None
        prefix, middle, suffix = (self.backend.token_to_id(t) for t in strings[:3])
        assert prefix is not None and middle is not None and suffix is not None
        pad = None if strings.pad is None else self.backend.token_to_id(strings.pad)
        return FimTokens(prefix, middle, suffix, pad)

    def _collect_special_ids(self) -> frozenset[int]:
        """Added tokens marked special, the eos/bos/pad ids and the FIM ids."""
        marked = {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}
        named = {self.eos_token_id, self.bos_token_id, self.pad_token_id, *(self.fim or ())}
        return frozenset(marked | {i for i in named if i is not None})

    # ---- text -> ids

    def encode(self, text: str) -> list[int]:
        """Token ids of text, with no special tokens added."""
        return self._encode(text).ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of document text: spellings of special tokens in it ("<fim_middle>",
        "<|endoftext|>") stay ordinary text, so a file cannot inject control tokens into a
        prompt built around it."""
        return self._encode(text, self._as_text_backend()).ids

    def encode_text_after(self, known: tuple[str, list[int]] | None, text: str) -> list[int]:
        """encode_text(text), reusing the ids of `known` (an earlier text and its encode_text
        ids) up to the last line break before the first character where the two differ.

        A line break after a non-space character starts a pre-token in byte-level BPE with
        the GPT-2 split pattern, so the ids before it cannot depend on anything after it: a
        keystroke at the end of a long prefix re-encodes one line instead of the file.
        Tokenizers without that property (see _splits_before_line_breaks) encode in full.
        """
        if known is None or not self._line_break_cuts:
            return self.encode_text(text)
        old, old_ids = known
        common = len(os.path.commonprefix((old, text)))
        cut = old.rfind("\n", 0, common)
        while cut > 0 and old[cut - 1].isspace():
            cut = old.rfind("\n", 0, cut)
        if cut < REUSE_MIN_CHARS:
            return self.encode_text(text)
        try:
            cut_bytes = len(old[:cut].encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: encode_text reports it
            return self.encode_text(text)
        ends = list(accumulate(len(self._token_bytes(i)) for i in old_ids))
        kept = bisect_left(ends, cut_bytes)
        if kept >= len(ends) or ends[kept] != cut_bytes:
            return self.encode_text(text)  # no token ends there: known was not this text's ids
        return old_ids[: kept + 1] + self.encode_text(text[cut:])

    def _as_text_backend(self) -> tokenizers.Tokenizer:
        if self._text_backend is None:
            self._text_backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
            self._text_backend.encode_special_tokens = True
        return self._text_backend

    def encode_with_offsets(self, text: str, *, as_text: bool = False) -> tuple[list[int], Offsets]:
        """Ids and each token's (start, end) character span in text (`as_text`: special-token
        spellings stay ordinary text, as in `encode_text`).

        Spans index the Python string. For byte-level BPE each is the smallest run of characters
        whose UTF-8 holds the token's bytes, whatever the tokenizer's trim_offsets says: spans
        follow one another and cover text, except that the pieces of a split multi-byte
        character all get that character's span (and a token joining bytes of two characters
        spans both). This equals transformers' offset_mapping with trim_offsets off.
        """
        encoding = self._encode(text, self._as_text_backend() if as_text else None)
        ids = encoding.ids
        if self._byte_level:
            pieces = [self._token_bytes(i) for i in ids]
            if b"".join(pieces) == text.encode("utf-8"):
                return ids, _char_spans(text, pieces)
        # Not byte-level, or a normalizer / stripping added token changed the text: the backend's
        # own character offsets are the best alignment there is.
        return ids, list(encoding.offsets)

    def _encode(
        self, text: str, backend: tokenizers.Tokenizer | None = None
    ) -> tokenizers.Encoding:
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, got {type(text).__name__}")
        try:
            return (backend or self.backend).encode(text, add_special_tokens=False)
        except TypeError:
            raise TokenizerError(_why_not_encodable(text)) from None

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        padding: bool | str = False,
        padding_side: str = "right",
        truncation: bool = False,
        max_length: int | None = None,
        truncation_side: str = "right",
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
    ) -> dict[str, Any]:
        """Encode a text or a batch the way transformers' tokenizers do.

        Returns input_ids, attention_mask and, when asked, offset_mapping (pads get (0, 0)).
        A str gives flat lists, a sequence of str gives lists of lists; return_tensors="pt"
        gives torch.long tensors of shape (B, T) ((B, T, 2) for offsets), B = 1 for a str.
        padding: True/"longest" pads to the longest row, "max_length" to max_length; the pad id
        is pad_token_id, else eos_token_id. truncation=True cuts rows to max_length, from the
        side named by truncation_side.
        """
        _check_call_options(padding, padding_side, truncation, max_length, truncation_side)
        if return_tensors not in (None, "pt"):
            raise TokenizerError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        single = isinstance(texts, str)
        batch = [texts] if isinstance(texts, str) else list(texts)
        rows = self._encode_rows(batch, return_offsets_mapping)
        if truncation:
            assert max_length is not None
            rows = [{k: _cut(v, max_length, truncation_side) for k, v in r.items()} for r in rows]
        if padding:
            rows = self._pad_rows(rows, padding, max_length, padding_side)
        out = {key: [row[key] for row in rows] for key in self._output_keys(return_offsets_mapping)}
        if return_tensors == "pt":
            return _as_tensors(out)
        return {k: v[0] for k, v in out.items()} if single else out

    def _encode_rows(self, batch: list[str], with_offsets: bool) -> list[Row]:
        for n, text in enumerate(batch):
            if not isinstance(text, str):
                raise TokenizerError(f"texts[{n}] must be a str, got {type(text).__name__}")
        if with_offsets:
            pairs = [self.encode_with_offsets(text) for text in batch]
        else:
            try:
                encodings = self.backend.encode_batch(batch, add_special_tokens=False)
            except TypeError:
                for text in batch:
                    self._encode(text)  # names the text that cannot be encoded
                raise
            pairs = [(e.ids, []) for e in encodings]
        rows = []
        for ids, offsets in pairs:
            row: Row = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if with_offsets:
                row["offset_mapping"] = offsets
            rows.append(row)
        return rows

    def _pad_rows(
        self, rows: list[Row], padding: bool | str, max_length: int | None, side: str
    ) -> list[Row]:
        pad_id = self.pad_token_id if self.pad_token_id is not None else self.eos_token_id
        if pad_id is None:
            raise TokenizerError(f"{self.source}: cannot pad, the tokenizer has no pad or eos")
        if padding == "max_length":
            assert max_length is not None
            length = max_length
        else:
            length = max((len(r["input_ids"]) for r in rows), default=0)
        fill = {"input_ids": pad_id, "attention_mask": 0, "offset_mapping": (0, 0)}
        return [{k: _pad(v, length, fill[k], side) for k, v in r.items()} for r in rows]

    @staticmethod
    def _output_keys(with_offsets: bool) -> tuple[str, ...]:
        keys = ("input_ids", "attention_mask")
        return (*keys, "offset_mapping") if with_offsets else keys

    # ---- ids -> text

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ids. Bytes that do not form whole UTF-8 characters (ids ending inside a
        multi-byte character) come out as U+FFFD; use decode_bytes to keep them."""
        checked = self._checked_ids(ids)
        if skip_special_tokens:
            checked = [i for i in checked if i not in self.special_ids]
        return self.backend.decode(checked, skip_special_tokens=False)

    def batch_decode(
        self, batch: Iterable[Iterable[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        """decode for each row of a batch (lists of ids or a (B, T) tensor)."""
        rows = batch.tolist() if isinstance(batch, torch.Tensor) else batch
        return [self.decode(row, skip_special_tokens) for row in rows]

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor) -> bytes:
        """The exact bytes the tokens stand for (byte-level tokenizers only), so a token that ends
        inside a multi-byte character keeps its partial bytes."""
        if not self._byte_level:
            raise TokenizerError(f"{self.source}: decode_bytes needs a ByteLevel decoder")
        return b"".join(self._token_bytes(i) for i in self._checked_ids(ids))

    def _token_bytes(self, token_id: int) -> bytes:
        cached = self._bytes_of_id.get(token_id)
        if cached is None:
            token = self.backend.id_to_token(token_id)
            assert token is not None, token_id
            cached = self._bytes_of_id[token_id] = _token_text_to_bytes(token)
        return cached

    def _checked_ids(self, ids: Iterable[int] | torch.Tensor) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise TokenizerError(f"expected a 1-D tensor of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        checked = [int(i) for i in ids]
        for i in checked:
            if not 0 <= i < self.vocab_size or self.backend.id_to_token(i) is None:
                raise TokenizerError(
                    f"token id {i} is out of range for vocab_size {self.vocab_size} ({self.source})"
                )
        return checked

    # ---- vocabulary

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id) if token_id >= 0 else None


def _why_not_encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"text is not valid Unicode: {err.reason} at index {err.start}"
    return f"the tokenizer cannot encode text of type {type(text).__name__}"


def _check_call_options(
    padding: bool | str, padding_side: str, truncation: bool, max_length: int | None, side: str
) -> None:
    if padding not in PADDING_CHOICES or padding_side not in SIDES or side not in SIDES:
        raise TokenizerError(
            f"padding must be one of {PADDING_CHOICES} (got {padding!r}); padding_side and "
            f"truncation_side one of {SIDES} (got {padding_side!r}, {side!r})"
        )
    needs_length = truncation or padding == "max_length"
    if needs_length and max_length is None:
        raise TokenizerError("truncation=True and padding='max_length' need max_length")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
        raise TokenizerError(f"max_length must be a non-negative int, got {max_length!r}")


def _as_tensors(out: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
    lengths = {len(row) for row in out["input_ids"]}
    if len(lengths) > 1:
        raise TokenizerError(
            f"rows have different lengths {sorted(lengths)}; pass padding=True to return tensors"
        )
    batch, length = len(out["input_ids"]), next(iter(lengths), 0)
    tensors = {  # (B, T) each
        key: torch.tensor(rows, dtype=torch.long).view(batch, length)
        for key, rows in out.items()
        if key != "offset_mapping"
    }
    if "offset_mapping" in out:
        spans = torch.tensor(out["offset_mapping"], dtype=torch.long)
        tensors["offset_mapping"] = spans.view(batch, length, 2)  # (B, T, 2)
    return tensors
