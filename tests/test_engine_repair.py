"""Partial-token repair: the prompt ends on a stable token boundary, and the index of token
bytes allows exactly the tokens that re-type the text taken off."""

from __future__ import annotations

import inspect
import random
import textwrap
from collections.abc import Callable

import pytest
import tokenizers
from lsp_fixtures import STARCODER_SPECIALS, train_tokenizer
from tokenizers import normalizers

from lsp_server.engine.repair import WINDOW_CHARS, TokenIndex, split_unstable_tail, token_index
from model.tokenizer import Tokenizer

CORPUS = [inspect.getsource(textwrap), "naïve = 'héllo wörld 世界 😀'\n" * 20]

PREFIXES = [
    "def wrap(text, width):\n    ret",
    "x = self.wid",
    "def f(x):\n    ",
    "if x > 0:",
    "print('héllo wö",
    "names = ['世界', 'x😀",
    "result = compute(a, b)\n",
    "    width_of_the_longest_line_in_the_paragraph",
    "x",
]


def _train(vocab_size: int = 800) -> tokenizers.Tokenizer:
    return train_tokenizer(vocab_size, STARCODER_SPECIALS, CORPUS)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(_train())


@pytest.fixture(scope="module")
def index(tok: Tokenizer) -> TokenIndex:
    return token_index(tok)


def _brute_force(tok: Tokenizer, keep: Callable[[bytes], bool]) -> list[int]:
    ids = range(tok.vocab_size)
    return [i for i in ids if i not in tok.special_ids and keep(tok.decode_bytes([i]))]


# ---- where the prompt is cut


@pytest.mark.parametrize("prefix", PREFIXES)
def test_stable_part_ends_on_a_boundary_of_the_prefix_tokens(tok: Tokenizer, prefix: str):
    stable, typed = split_unstable_tail(tok, prefix)
    assert stable + typed == prefix and typed
    stable_ids = tok.encode(stable)
    assert tok.encode(prefix)[: len(stable_ids)] == stable_ids


@pytest.mark.parametrize(
    ("prefix", "typed"),
    [
        ("def wrap(text, width):\n    ret", " ret"),
        ("x = self.wid", "wid"),
        ("def f(x):\n    ", "\n    "),
        ("if x > 0:", ":"),
        ("print('héllo wö", " wö"),
        ("x = 1", " 1"),
    ],
)
def test_last_word_punctuation_or_whitespace_is_taken_off(tok: Tokenizer, prefix: str, typed: str):
    assert split_unstable_tail(tok, prefix) == (prefix[: -len(typed)], typed)


def test_long_word_loses_at_most_max_tokens(tok: Tokenizer):
    prefix = "    width_of_the_longest_line_in_the_paragraph"
    stable, typed = split_unstable_tail(tok, prefix, max_tokens=2)
    assert (
        len(tok.encode(typed)) <= 2 < len(tok.encode(" width_of_the_longest_line_in_the_paragraph"))
    )
    assert stable.startswith("    width_of") and stable + typed == prefix


def test_multibyte_character_split_across_tokens_is_never_cut(tok: Tokenizer):
    assert len(tok.encode("🎉")) >= 3  # not in the corpus: byte pieces
    assert split_unstable_tail(tok, "s = '🎉") == ("s =", " '🎉")
    # Each of the last two tokens ends inside the emoji: no boundary to cut at.
    assert split_unstable_tail(tok, "s = '🎉", max_tokens=2) == ("s = '🎉", "")


def test_empty_prefix_gives_nothing_to_repair(tok: Tokenizer):
    assert split_unstable_tail(tok, "") == ("", "")


def test_long_prefix_is_cut_the_same_as_its_last_lines(tok: Tokenizer):
    tail = "def f(text):\n    return text.spl"
    long_prefix = "x = 1\n" * WINDOW_CHARS + tail
    stable, typed = split_unstable_tail(tok, long_prefix)
    assert typed == split_unstable_tail(tok, tail)[1] == "spl"
    assert stable + typed == long_prefix


def test_tokens_that_do_not_spell_the_text_give_no_repair():
    backend = _train(400)
    backend.normalizer = normalizers.Lowercase()
    lowering = Tokenizer(backend)
    assert split_unstable_tail(lowering, "X = Self.Width") == ("X = Self.Width", "")


# ---- which tokens may re-type the text taken off


@pytest.mark.parametrize("data", [b"", b" ", b" re", b"wid", b"\n   ", b"\xc3", b"\xff", b"zzzq"])
def test_starting_with_equals_brute_force_over_the_vocabulary(
    tok: Tokenizer, index: TokenIndex, data: bytes
):
    assert sorted(index.starting_with(data)) == _brute_force(tok, lambda b: b.startswith(data))


@pytest.mark.parametrize("data", [b" return", b"\n        ", "wörld".encode(), b"x"])
def test_prefixes_of_equals_brute_force_over_the_vocabulary(
    tok: Tokenizer, index: TokenIndex, data: bytes
):
    expected = _brute_force(tok, lambda b: data.startswith(b) and b != data)
    assert sorted(index.prefixes_of(data)) == expected


def test_special_tokens_are_never_allowed(tok: Tokenizer, index: TokenIndex):
    allowed = index.allowed(b"<fim")
    assert tok.token_to_id("<fim_prefix>") not in allowed
    pieces = [tok.decode_bytes([i]) for i in allowed]
    assert b"<" in pieces and all(b.startswith(b"<fim") or b"<fim".startswith(b) for b in pieces)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_own_tokens_re_type_the_removed_text_step_by_step(
    tok: Tokenizer, index: TokenIndex, prefix: str
):
    stable, typed = split_unstable_tail(tok, prefix)
    remaining = typed.encode()
    for token_id in tok.encode(prefix)[len(tok.encode(stable)) :]:
        assert token_id in index.allowed(remaining)
        remaining = index.remaining(remaining, token_id)
    assert remaining == b""


def _retypes(tok: Tokenizer, index: TokenIndex, prefix: str, then: str) -> bool:
    """Whether the tokens of `prefix + then` after the prompt's re-type the text taken off."""
    stable, typed = split_unstable_tail(tok, prefix)
    remaining = typed.encode()
    for token_id in tok.encode(prefix + then)[len(tok.encode(stable)) :]:
        if token_id not in index.allowed(remaining):
            return False
        remaining = index.remaining(remaining, token_id)
        if not remaining:
            return True
    return False


@pytest.mark.parametrize(("prefix", "wanted", "refused"), [
    ("def f(x):\n    ", "return x", "    return x"),  # no deeper indentation than the cursor's
    ("x = ", "1", "   1"),  # no more spaces (a lone " " token then " 1" is not refused)
    ("print(a, ", "b)", "  b)"),
])
def test_no_token_adds_whitespace_after_typed_whitespace(
    tok: Tokenizer, index: TokenIndex, prefix: str, wanted: str, refused: str
):
    assert split_unstable_tail(tok, prefix)[1].endswith(" ")
    assert _retypes(tok, index, prefix, wanted)
    assert not _retypes(tok, index, prefix, refused)


@pytest.mark.parametrize("typed", [b"\n    ", b" ", b"\n\t", b"\t"])
def test_no_allowed_token_goes_on_with_a_blank(tok: Tokenizer, index: TokenIndex, typed: bytes):
    allowed = index.allowed(typed)
    assert allowed
    after = [tok.decode_bytes([i])[len(typed):] for i in allowed]
    assert not [rest for rest in after if rest[:1] in (b" ", b"\t")]


def test_remaining_is_empty_after_a_token_that_covers_the_text(tok: Tokenizer, index: TokenIndex):
    longer = index.starting_with(b" re")
    assert longer and all(index.remaining(b" re", i) == b"" for i in longer)
    assert index.remaining(b" re", tok.encode(" r")[0]) == b"e"


def test_token_index_is_built_once_per_tokenizer(tok: Tokenizer, index: TokenIndex):
    assert token_index(tok) is index
    assert token_index(Tokenizer(tok.backend)) is not index


class _RandomVocab:
    """A tokenizer-like vocabulary of 50k random byte strings (no encode needed here)."""

    def __init__(self, size: int) -> None:
        rng = random.Random(0)
        alphabet = b" \nabcdefgh\xc3\xa9\xff"
        self.pieces = [bytes(rng.choices(alphabet, k=rng.randint(1, 6))) for _ in range(size)]
        self.vocab_size = size
        self.special_ids = frozenset({0})

    def encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.pieces[i] for i in ids)

    def id_to_token(self, token_id: int) -> str | None:
        return "t" if 0 <= token_id < self.vocab_size else None


def test_index_over_a_50k_vocabulary_matches_brute_force():
    vocab = _RandomVocab(50_000)
    index = TokenIndex(vocab)
    for data in [b" a", b"ab\xc3", b"\n \xff\xff"]:
        starting = [i for i in range(1, vocab.vocab_size) if vocab.pieces[i].startswith(data)]
        shorter = [
            i
            for i in range(1, vocab.vocab_size)
            if data.startswith(vocab.pieces[i]) and vocab.pieces[i] != data
        ]
        assert sorted(index.allowed(data)) == sorted(starting + shorter)


class _ContextualTokenizer:
    """Gives "x" a different id alone than before " abc", as SentencePiece-style tokenizers
    can: a cut there would not reproduce the prompt's tokens."""

    vocab_size = 3
    special_ids: frozenset[int] = frozenset()
    encodings = {"x abc": [0, 1], "x": [2], "": []}
    pieces = [b"x", b" abc", b"x"]

    def encode_text(self, text: str) -> list[int]:
        return self.encodings[text]

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.pieces[i] for i in ids)

    def id_to_token(self, token_id: int) -> str | None:
        return str(token_id)


def test_boundary_whose_text_encodes_differently_alone_is_skipped():
    assert split_unstable_tail(_ContextualTokenizer(), "x abc") == ("", "x abc")
