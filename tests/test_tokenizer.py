"""Tokenizer wrapper: round trips, character offsets, batching, FIM lookup, raw bytes, errors."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import tokenizers
import torch
from lsp_fixtures import STARCODER_SPECIALS, train_tokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from model.checkpoint import DEFAULT_MODEL_DIR
from model.tokenizer import BYTE_TO_CHAR, FimStrings, FimTokens, Tokenizer, TokenizerError

SANTACODER_FIM = ["<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"]
# Python source plus one emoji, which becomes a single token; other emoji stay in byte pieces.
CORPUS = [inspect.getsource(textwrap), "s = '😀😀😀😀'  # ok\n" * 40]

ROUND_TRIP_TEXTS = [
    "def f(x):\r\n\treturn x  # ok\r\n",
    "naïve = '😀 世界 🎉'\n",
    "\t\t\n\n  \r \u00a0\u200b\ufeff",
    "",
    "a<fim_prefix>b<|endoftext|>c",
    "\x00\x7f\x1b[0m",
]


def _train(specials: list[str], added_after: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    return train_tokenizer(vocab_size, specials, CORPUS, added_after)


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoint-like folders holding only a tokenizer.json, one per spelling."""
    backends = {
        "starcoder": _train(STARCODER_SPECIALS, [], 400),
        "santacoder": _train(["<|endoftext|>"], SANTACODER_FIM, 400),
        "fim_without_pad": _train(STARCODER_SPECIALS[:4], [], 300),
        "no_specials": _train([], [], 300),
    }
    root = tmp_path_factory.mktemp("tokenizers")
    for name, backend in backends.items():
        (root / name).mkdir()
        backend.save(str(root / name / "tokenizer.json"))
    return {name: root / name for name in backends}


@pytest.fixture(scope="session")
def starcoder(folders: dict[str, Path]) -> Tokenizer:
    return Tokenizer.from_pretrained(folders["starcoder"])


@pytest.fixture(scope="session")
def santacoder(folders: dict[str, Path]) -> Tokenizer:
    return Tokenizer.from_pretrained(folders["santacoder"])


def _copy_with(tok: Tokenizer, **components: object) -> Tokenizer:
    backend = tokenizers.Tokenizer.from_str(tok.backend.to_str())
    for name, value in components.items():
        setattr(backend, name, value)
    return Tokenizer(backend)


# ---- round trips and bytes


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_decode_of_encode_round_trips_non_ascii_crlf_and_tabs(starcoder: Tokenizer, text: str):
    ids = starcoder.encode(text)
    assert starcoder.decode(ids) == text
    assert starcoder.decode_bytes(ids) == text.encode("utf-8")


def test_byte_alphabet_matches_tokenizers_byte_level():
    assert sorted(BYTE_TO_CHAR) == list(range(256))
    assert sorted(BYTE_TO_CHAR.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert [BYTE_TO_CHAR[b] for b in b" \nA\xad"] == ["Ġ", "Ċ", "A", "Ń"]


def test_split_multibyte_char_decodes_to_replacement_but_keeps_raw_bytes(starcoder: Tokenizer):
    ids = starcoder.encode("🎉")  # not in the training text, so it stays in pieces
    assert len(ids) >= 2
    head = starcoder.decode_bytes(ids[:1])
    assert 1 <= len(head) < 4 and "🎉".encode() == head + starcoder.decode_bytes(ids[1:])
    assert starcoder.decode(ids[:1]) == "\ufffd"
    assert starcoder.decode(ids) == "🎉"


def test_decode_bytes_of_added_tokens_is_their_utf8(santacoder: Tokenizer):
    ids = santacoder.encode("x<fim-middle>y")
    assert santacoder.decode_bytes(ids) == b"x<fim-middle>y"


def test_decode_bytes_refuses_tokenizer_without_byte_level_decoder(starcoder: Tokenizer):
    plain = _copy_with(starcoder, decoder=decoders.BPEDecoder())
    with pytest.raises(TokenizerError, match="ByteLevel"):
        plain.decode_bytes([5])


def test_batch_decode_decodes_each_row_of_a_tensor(starcoder: Tokenizer):
    rows = [starcoder.encode("a = 1"), starcoder.encode("b = 2")]
    width = max(map(len, rows))
    batch = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    decoded = starcoder.batch_decode(batch, skip_special_tokens=True)
    assert decoded == ["a = 1", "b = 2"]


def test_skip_special_tokens_drops_eos_and_fim_tokens(starcoder: Tokenizer):
    ids = starcoder.encode("<fim_prefix>a<fim_suffix>b<fim_middle>c<|endoftext|>")
    assert starcoder.decode(ids, skip_special_tokens=True) == "abc"
    assert starcoder.special_ids == frozenset(range(5))


# ---- special tokens, FIM, vocabulary


def test_special_tokens_in_text_encode_as_single_ids(starcoder: Tokenizer, santacoder: Tokenizer):
    ids = starcoder.encode("x<fim_prefix>y<|endoftext|>")
    assert ids[1] == 1 and ids[-1] == 0 and len(ids) == 4
    fim = santacoder.fim
    assert fim is not None
    assert santacoder.encode("<fim-suffix>")[0] == fim.suffix
    assert len(santacoder.encode("<fim-suffix><fim-pad>")) == 2


def test_fim_detects_starcoder_spelling_at_ids_1_to_4(starcoder: Tokenizer):
    assert starcoder.fim == FimTokens(prefix=1, middle=2, suffix=3, pad=4)
    assert starcoder.fim_strings == FimStrings(*STARCODER_SPECIALS[1:])


def test_fim_detects_santacoder_spelling_after_the_vocabulary(santacoder: Tokenizer):
    assert santacoder.fim == FimTokens(prefix=400, middle=401, suffix=402, pad=403)
    assert santacoder.fim_strings == FimStrings(*SANTACODER_FIM)
    assert santacoder.vocab_size == 404  # the added FIM tokens count
    assert santacoder.special_ids == frozenset({0, 400, 401, 402, 403})


def test_fim_pad_is_none_when_absent_and_fim_none_without_sentinels(folders: dict[str, Path]):
    no_pad = Tokenizer.from_pretrained(folders["fim_without_pad"])
    assert no_pad.fim == FimTokens(1, 2, 3, None)
    assert no_pad.fim_strings is not None and no_pad.fim_strings.pad is None
    bare = Tokenizer.from_pretrained(folders["no_specials"])
    assert bare.fim is None and bare.fim_strings is None


def test_defaults_without_config_files(starcoder: Tokenizer, folders: dict[str, Path]):
    assert (starcoder.eos_token_id, starcoder.bos_token_id, starcoder.pad_token_id) == (0, 0, None)
    assert starcoder.eos_token == "<|endoftext|>" and starcoder.vocab_size == 400
    bare = Tokenizer.from_file(folders["no_specials"] / "tokenizer.json")
    assert (bare.eos_token_id, bare.bos_token_id) == (None, None)


def test_special_tokens_map_overrides_tokenizer_config(folders: dict[str, Path], tmp_path: Path):
    shutil.copy(folders["starcoder"] / "tokenizer.json", tmp_path)
    config = {"bos_token": "<fim_prefix>", "pad_token": "<fim_middle>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    special_map = {"pad_token": {"content": "<fim_pad>", "lstrip": False}, "eos_token": None}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special_map))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (0, 1, 4)
    assert tok(["a", "a b c"], padding=True)["input_ids"][0][-1] == 4


def test_token_lookups_return_none_for_unknowns(starcoder: Tokenizer):
    assert starcoder.token_to_id("<fim_pad>") == 4 and starcoder.id_to_token(4) == "<fim_pad>"
    assert starcoder.token_to_id("<no such token>") is None
    assert starcoder.id_to_token(-1) is None and starcoder.id_to_token(400) is None


# ---- offsets


def _assert_spans_are_minimal_byte_covers(tok: Tokenizer, text: str) -> None:
    """Each span is the smallest run of characters whose UTF-8 holds the token's bytes."""
    ids, spans = tok.encode_with_offsets(text)
    byte_pos = 0
    for token_id, (start, end) in zip(ids, spans, strict=True):
        size = len(tok.decode_bytes([token_id]))
        assert len(text[:start].encode()) <= byte_pos < len(text[: start + 1].encode())
        assert len(text[: end - 1].encode()) < byte_pos + size <= len(text[:end].encode())
        byte_pos += size
    assert byte_pos == len(text.encode())


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_offsets_cover_each_tokens_bytes_exactly(starcoder: Tokenizer, text: str):
    _assert_spans_are_minimal_byte_covers(starcoder, text)


def test_offsets_slice_text_into_token_texts(starcoder: Tokenizer):
    text = "def f(x):\r\n\treturn 'na' + \"😀\"\n"
    ids, spans = starcoder.encode_with_offsets(text)
    assert "".join(text[s:e] for s, e in spans) == text
    assert [text[s:e] for s, e in spans] == [starcoder.decode([i]) for i in ids]


def test_pieces_of_a_split_character_share_its_span(starcoder: Tokenizer):
    text = "x = '🎉'"
    ids, spans = starcoder.encode_with_offsets(text)
    assert spans.count((5, 6)) >= 2
    assert [s for s in spans if s[0] <= 5 < s[1]] == [(5, 6)] * spans.count((5, 6))


def test_offsets_of_a_token_joining_two_characters_span_both():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # "Ģð" joins the last byte of one 😀 with the first byte of the next.
    vocab = {c: i for i, c in enumerate(alphabet)} | {"Ģð": 256}
    backend = tokenizers.Tokenizer(models.BPE(vocab, [("Ģ", "ð")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = Tokenizer(backend)
    ids, spans = tok.encode_with_offsets("😀😀")
    assert ids.index(256) == 3
    assert spans == [(0, 1)] * 3 + [(0, 2)] + [(1, 2)] * 3
    _assert_spans_are_minimal_byte_covers(tok, "a😀😀b")


def test_offsets_keep_spaces_when_post_processor_trims_offsets(starcoder: Tokenizer):
    trimming = _copy_with(starcoder, post_processor=processors.ByteLevel(trim_offsets=True))
    text = "def f(x):\n    return x"
    backend_spans = trimming.backend.encode(text).offsets
    assert "".join(text[s:e] for s, e in backend_spans) != text  # the backend drops spaces
    _, spans = trimming.encode_with_offsets(text)
    assert "".join(text[s:e] for s, e in spans) == text


def test_offsets_fall_back_to_backend_alignment_under_a_normalizer(starcoder: Tokenizer):
    nfkc = _copy_with(starcoder, normalizer=normalizers.NFKC())
    text = "ﬁle = 1"  # the ligature normalizes to "fi"
    ids, spans = nfkc.encode_with_offsets(text)
    assert spans == [tuple(o) for o in nfkc.backend.encode(text).offsets]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)


# ---- batching


def test_str_gives_flat_lists_and_list_gives_rows(starcoder: Tokenizer):
    ids = starcoder.encode("x = 1")
    assert starcoder("x = 1") == {"input_ids": ids, "attention_mask": [1] * len(ids)}
    assert starcoder(["x = 1"])["input_ids"] == [ids]


def test_str_with_pt_gives_batch_of_one_long_tensors(starcoder: Tokenizer):
    ids = starcoder.encode("x = '😀'")
    out = starcoder("x = '😀'", return_tensors="pt", return_offsets_mapping=True)
    assert out["input_ids"].dtype == torch.long and out["input_ids"].tolist() == [ids]
    assert out["attention_mask"].shape == (1, len(ids))
    assert out["offset_mapping"].shape == (1, len(ids), 2)
    assert out["offset_mapping"][0, -1].tolist() == [6, 7]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_to_longest_masks_pads_and_pads_with_eos(starcoder: Tokenizer, side: str):
    texts = ["def f(): pass", "x"]
    long, short = (starcoder.encode(t) for t in texts)
    n = len(long) - len(short)
    out = starcoder(texts, padding=True, padding_side=side, return_offsets_mapping=True)
    assert starcoder.eos_token_id is not None
    pads, zeros, ones = [starcoder.eos_token_id] * n, [0] * n, [1] * len(short)
    row = short + pads if side == "right" else pads + short
    mask = ones + zeros if side == "right" else zeros + ones
    assert starcoder.pad_token_id is None and out["input_ids"] == [long, row]
    assert out["attention_mask"] == [[1] * len(long), mask]
    pad_spans = [span for span, m in zip(out["offset_mapping"][1], mask, strict=True) if not m]
    assert pad_spans == [(0, 0)] * n


def test_padding_max_length_pads_every_row_to_it(starcoder: Tokenizer):
    out = starcoder(["a", "b c"], padding="max_length", max_length=9, return_tensors="pt")
    assert out["input_ids"].shape == (2, 9)
    lengths = [len(starcoder.encode(t)) for t in ["a", "b c"]]
    assert out["attention_mask"].sum(dim=1).tolist() == lengths


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_cuts_ids_and_offsets_from_the_chosen_side(starcoder: Tokenizer, side: str):
    text = "def function(argument): return argument"
    ids, spans = starcoder.encode_with_offsets(text)
    assert len(ids) > 3
    out = starcoder(
        text, truncation=True, max_length=3, truncation_side=side, return_offsets_mapping=True
    )
    keep = slice(None, 3) if side == "right" else slice(-3, None)
    assert out["input_ids"] == ids[keep] and out["offset_mapping"] == spans[keep]


def test_padding_without_pad_or_eos_token_raises(folders: dict[str, Path]):
    bare = Tokenizer.from_pretrained(folders["no_specials"])
    with pytest.raises(TokenizerError, match="cannot pad, the tokenizer has no pad or eos"):
        bare(["a", "b c"], padding=True)


def test_tensors_of_unequal_rows_without_padding_raise(starcoder: Tokenizer):
    with pytest.raises(TokenizerError, match="padding=True"):
        starcoder(["a", "b c d"], return_tensors="pt")


@pytest.mark.parametrize(
    "options",
    [{"truncation": True}, {"padding": "max_length"}, {"padding": "most"}, {"padding_side": "up"}],
)
def test_bad_call_options_raise(starcoder: Tokenizer, options: dict[str, object]):
    with pytest.raises(TokenizerError):
        starcoder(["a"], **options)  # type: ignore[arg-type]


# ---- finding the checkpoint, as the model's from_pretrained does


def test_from_pretrained_default_is_the_packaged_models_tokenizer():
    tok = Tokenizer.from_pretrained("default")
    assert Path(tok.source) == DEFAULT_MODEL_DIR / "tokenizer.json"
    assert tok.vocab_size == Tokenizer.from_pretrained(DEFAULT_MODEL_DIR).vocab_size


def test_from_pretrained_finds_a_model_id_in_the_local_hub_cache(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    old, new = "a" * 40, "b" * 40
    repo = tmp_path / "models--bigcode--tiny_starcoder_py"
    for commit in (old, new):
        shutil.copytree(folders["starcoder"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(old)
    tok = Tokenizer.from_pretrained("bigcode/tiny_starcoder_py")
    assert tok.source == str(repo / "snapshots" / old / "tokenizer.json")
    assert tok.fim == Tokenizer.from_pretrained(folders["starcoder"]).fim
    pinned = Tokenizer.from_pretrained("bigcode/tiny_starcoder_py", revision=new)
    assert pinned.source == str(repo / "snapshots" / new / "tokenizer.json")


def test_from_pretrained_of_an_uncached_id_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(TokenizerError, match="models--bigcode--starcoder.*not attempted"):
        Tokenizer.from_pretrained("bigcode/starcoder")
    with pytest.raises(TokenizerError, match="no such folder"):
        Tokenizer.from_pretrained(tmp_path / "absent")


# ---- errors


def test_missing_tokenizer_json_names_the_path(tmp_path: Path):
    with pytest.raises(TokenizerError, match=str(tmp_path / "tokenizer.json")):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="no such file"):
        Tokenizer.from_file(tmp_path / "absent.json")


@pytest.mark.parametrize("content", ["{not json", '{"model": 3}', ""])
def test_corrupt_tokenizer_json_names_the_path(tmp_path: Path, content: str):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=f"{path}: not a valid tokenizer.json"):
        Tokenizer.from_file(path)


def test_corrupt_config_file_names_the_file(folders: dict[str, Path], tmp_path: Path):
    shutil.copy(folders["starcoder"] / "tokenizer.json", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_configured_token_missing_from_vocabulary_is_named(folders: dict[str, Path], tmp_path):
    shutil.copy(folders["starcoder"] / "tokenizer.json", tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(TokenizerError, match="pad_token '<pad>' is not in the vocabulary"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad_id", [400, -1, 10**12])
def test_out_of_range_ids_name_the_id_and_vocab_size(starcoder: Tokenizer, bad_id: int):
    message = f"token id {bad_id} is out of range for vocab_size 400"
    with pytest.raises(TokenizerError, match=message):
        starcoder.decode([5, bad_id])
    with pytest.raises(TokenizerError, match=f"token id {bad_id}"):
        starcoder.decode_bytes([bad_id])


def test_text_with_lone_surrogate_raises_naming_the_index(starcoder: Tokenizer):
    with pytest.raises(TokenizerError, match="index 2"):
        starcoder.encode("ab\ud800c")
    with pytest.raises(TokenizerError, match="index 1"):
        starcoder(["ok", "a\udc00"])


# ---- parity


@pytest.mark.slow  # importing transformers takes over a second
def test_ids_and_offsets_match_transformers_fast_tokenizer(folders: dict[str, Path], starcoder):
    transformers = pytest.importorskip("transformers")
    path = folders["starcoder"] / "tokenizer.json"
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in ROUND_TRIP_TEXTS + ["class A:\n    pass\n", "x = '🎉😀😀'"]:
        expected = reference(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = starcoder.encode_with_offsets(text)
        assert ids == expected["input_ids"], text
        assert spans == expected["offset_mapping"], text


def test_encode_text_keeps_special_token_spellings_as_ordinary_text(starcoder: Tokenizer):
    text = "s = '<fim_middle>' + '<|endoftext|>'\n"
    assert set(starcoder.encode(text)) & {0, 2}  # encode parses them...
    ids = starcoder.encode_text(text)
    assert not set(ids) & starcoder.special_ids  # ...encode_text does not
    assert starcoder.decode(ids) == text


# -- re-encoding after an edit (encode_text_after) ------------------------------------------


def _edit_session(text: str, seed: int, edits: int = 150) -> list[str]:
    """Texts of a session of random edits: typing at the end or inside, deleting, pasting,
    line breaks after spaces, CRLF, tabs and characters of several UTF-8 lengths."""
    import random

    rng = random.Random(seed)
    inserts = ["x", " ", "\n", "\n    ", "  \n", "\r\n", "\t", "é", "世", "😀", "(", "):\n",
               "def f(a, b):\n    return a", "# note ", "\n\n"]
    texts = []
    for _ in range(edits):
        at = len(text) if rng.random() < 0.5 else rng.randrange(len(text) + 1)
        if rng.random() < 0.2 and at > 0:
            start = max(0, at - rng.randrange(1, 40))
            text = text[:start] + text[at:]
        else:
            text = text[:at] + rng.choice(inserts) + text[at:]
        texts.append(text)
    return texts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encoding_after_an_edit_equals_encoding_in_full(seed: int) -> None:
    tok = Tokenizer.from_pretrained("model/default")
    assert tok._line_break_cuts  # the packaged tokenizer allows cutting at line breaks
    base = inspect.getsource(textwrap)[: 3000 + 1000 * seed]
    known = (base, tok.encode_text(base))
    reused = 0
    for text in _edit_session(base, seed):
        got = tok.encode_text_after(known, text)
        assert got == tok.encode_text(text)
        common = len(os.path.commonprefix((known[0], text)))
        reused += common > 400
        known = (text, got)
    assert reused > 0  # the sessions did exercise the reusing branch


def test_encoding_after_an_edit_reencodes_only_from_the_last_line_break(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tok = Tokenizer.from_pretrained("model/default")
    base = inspect.getsource(textwrap)[:4000]
    known = (base, tok.encode_text(base))
    seen: list[str] = []
    real = tok.encode_text
    monkeypatch.setattr(tok, "encode_text", lambda t: seen.append(t) or real(t))
    text = base + "value = 1"
    tok.encode_text_after(known, text)
    assert len(seen) == 1 and text.endswith(seen[0]) and seen[0].startswith("\n")
    assert len(seen[0]) < 200  # one line, not the file


def test_tokenizers_that_may_merge_across_line_breaks_encode_in_full() -> None:
    backend = train_tokenizer(400, corpus=CORPUS)
    backend.normalizer = normalizers.NFKC()  # a normalizer may change what precedes a break
    tok = Tokenizer(backend)
    assert not tok._line_break_cuts
    text = "x = 1\n" * 100
    assert tok.encode_text_after((text, tok.encode_text(text)), text + "y") == \
        tok.encode_text(text + "y")
    plain = Tokenizer(train_tokenizer(400, corpus=CORPUS))
    assert plain._line_break_cuts
