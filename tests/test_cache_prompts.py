"""Prompt layouts, the context window policy, and the cache's central promise: after any
sequence of edits, logits from the cached path equal a fresh full forward on the same prompt."""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lsp_fixtures import train_tokenizer
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers, trainers

from cache import ContextBudget, PrefixStore, PromptBuilder, layout_ids, longest_common_prefix
from model import GPTBigCodeConfig, GPTBigCodeForCausalLM
from model.decoders import make_decoder
from model.tokenizer import Tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SPECIALS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]
URI = "file:///doc.py"
SOURCE = (STDLIB / "textwrap.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """A byte-level BPE with StarCoder's special tokens at ids 0..4."""
    corpus = [(STDLIB / name).read_text(encoding="utf-8") for name in ("string.py", "shlex.py")]
    backend = train_tokenizer(512, SPECIALS, corpus)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    backend.save(str(path))
    tokenizer = Tokenizer.from_file(path)
    assert tokenizer.fim is not None and tuple(tokenizer.fim) == (1, 2, 3, 4)
    return tokenizer


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread


def words(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode_text(text) if text else []


# -- layouts --------------------------------------------------------------------------------


def test_spm_layout_puts_the_text_before_the_cursor_last(tok: Tokenizer) -> None:
    text = "def f(x):\n    return x + 1\n\nprint(f(2))\n"
    cursor = text.index("x + 1")
    p, m, s = tok.fim.prefix, tok.fim.middle, tok.fim.suffix  # type: ignore[union-attr]
    expected = [p, s, *words(tok, text[cursor:]), m, *words(tok, text[:cursor])]
    assert layout_ids("spm", tok, text, cursor) == expected


def test_psm_line_layout_puts_the_cursor_line_after_fim_middle(tok: Tokenizer) -> None:
    text = "def f(x):\n    return x + 1\n\nprint(f(2))\n"
    cursor = text.index("x + 1")
    line = text.index("    return")
    p, m, s = tok.fim.prefix, tok.fim.middle, tok.fim.suffix  # type: ignore[union-attr]
    expected = [
        p, *words(tok, text[:line]), s, *words(tok, text[cursor:]), m,
        *words(tok, text[line:cursor]),
    ]
    assert layout_ids("psm_line", tok, text, cursor) == expected


def test_plain_layout_is_the_text_before_the_cursor(tok: Tokenizer) -> None:
    text = "import os\nos.getcwd()\n"
    assert layout_ids("plain", tok, text, 12) == tok.encode_text(text[:12])


def test_unknown_layout_and_bad_cursor_are_named(tok: Tokenizer) -> None:
    builder = PromptBuilder(tok)
    with pytest.raises(ValueError, match="unknown prompt layout 'pms'"):
        builder.build(URI, "x = 1\n", 0, layout="pms")
    with pytest.raises(ValueError, match=r"doc\.py: cursor offset 9 is outside the text \(0..6\)"):
        builder.build(URI, "x = 1\n", 9)


def test_fim_layout_without_fim_tokens_is_refused(tmp_path: Path) -> None:
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["x = 1\n"] * 10, trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ))
    backend.save(str(tmp_path / "tokenizer.json"))
    plain = Tokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="needs FIM special tokens"):
        PromptBuilder(plain).build(URI, "x = 1\n", 3, layout="spm")
    built = PromptBuilder(plain).build(URI, "x = 1\n", 3, layout="plain")
    assert built.ids == plain.encode_text("x =")


def test_budget_names_the_setting_that_is_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"prefix_share must be in \(0, 1\], got 1.5"):
        ContextBudget(prefix_share=1.5)
    with pytest.raises(ValueError, match="tokens must be an integer >= 8, got 4"):
        ContextBudget(tokens=4)
    with pytest.raises(ValueError, match="suffix_cap must be None or an integer >= 0, got -1"):
        ContextBudget(suffix_cap=-1)
    assert ContextBudget(tokens=1000, prefix_share=0.7, suffix_cap=None).suffix_tokens == 300
    assert ContextBudget(tokens=1000, prefix_share=0.7, suffix_cap=200).suffix_tokens == 200
    assert ContextBudget(tokens=400, suffix_cap=200).suffix_tokens == 100


# -- keystrokes and the window --------------------------------------------------------------


def typed(text: str, cursor: int, keys: str) -> Iterator[tuple[str, int]]:
    for key in keys:
        text = text[:cursor] + key + text[cursor:]
        cursor += 1
        yield text, cursor


def test_typing_at_the_cursor_only_appends_to_the_spm_prompt(tok: Tokenizer) -> None:
    text = SOURCE[:3000]
    cursor = text.index("\n", 2000) + 1
    builder = PromptBuilder(tok, ContextBudget(tokens=4096))
    last = builder.build(URI, text, cursor).ids
    for now, at in typed(text, cursor, "    if width <= 0:\n        return []\n"):
        ids = builder.build(URI, now, at).ids
        # Only the last word's tokens can change when a character joins it.
        assert len(last) - longest_common_prefix(last, ids) <= 3
        last = ids
    assert builder.window_moves == 0


def test_typing_within_a_line_keeps_the_psm_line_prompt_before_it(tok: Tokenizer) -> None:
    text = SOURCE[:3000]
    cursor = text.index("\n", 2000) + 1
    builder = PromptBuilder(tok, ContextBudget(tokens=4096))
    first = builder.build(URI, text, cursor, "psm_line").ids
    before_line = first.index(tok.fim.middle) + 1  # type: ignore[union-attr]
    for now, at in typed(text, cursor, "    total = width * 2"):
        ids = builder.build(URI, now, at, "psm_line").ids
        assert ids[:before_line] == first[:before_line]


def test_typing_500_characters_at_the_end_of_a_long_file_moves_the_window_rarely(
    tok: Tokenizer,
) -> None:
    budget = ContextBudget(tokens=300)
    text = SOURCE[: SOURCE.index("\n", 2000) + 1]
    assert len(tok.encode_text(text)) >= 2 * budget.tokens
    builder = PromptBuilder(tok, budget)
    prompt = builder.build(URI, text, len(text))
    moves, starts = 0, {prompt.start}
    snippet = "        for chunk in chunks:\n            lines.append(chunk.strip())\n"
    for now, at in typed(text, len(text), (snippet * 8)[:500]):
        new = builder.build(URI, now, at)
        assert new.prefix_tokens <= budget.tokens and new.suffix_tokens == 0
        assert new.start == 0 or now[new.start - 1] == "\n"
        if new.start != prompt.start:
            moves += 1
            starts.add(new.start)
        else:  # between moves a keystroke reuses everything but the last word
            assert len(prompt.ids) - longest_common_prefix(prompt.ids, new.ids) <= 3
        prompt = new
    assert 1 <= moves <= 5
    assert builder.window_moves == moves == len(starts) - 1


class CountingTokenizer:
    """Wraps a tokenizer and counts the characters it was asked to encode."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner, self.fim, self.characters = inner, inner.fim, 0

    def encode_text(self, text: str) -> list[int]:
        self.characters += len(text)
        return self.inner.encode_text(text)


def test_cursor_jump_in_a_huge_file_replaces_the_window_without_tokenising_the_gap(
    tok: Tokenizer,
) -> None:
    text = SOURCE * (2_000_000 // len(SOURCE))  # about 2 MB
    counting = CountingTokenizer(tok)
    builder = PromptBuilder(counting, ContextBudget(tokens=300))
    for cursor in (len(text) // 2, 10, len(text) - 10, len(text) // 3):
        cursor = text.index("\n", cursor) + 1
        counting.characters = 0
        prompt = builder.build(URI, text, cursor)
        assert prompt.prefix_tokens + prompt.suffix_tokens <= 300
        assert prompt.ids == layout_ids("spm", tok, text, cursor, prompt.start, prompt.end)
        assert counting.characters < 100_000  # not the megabytes between old and new cursor


def test_window_shows_whole_lines_within_budget_wherever_the_cursor_is(tok: Tokenizer) -> None:
    budget = ContextBudget(tokens=200, prefix_share=0.6)
    builder = PromptBuilder(tok, budget)
    rng = random.Random(3)
    text = SOURCE[:8000]
    for _ in range(30):
        cursor = rng.randrange(len(text) + 1)
        prompt = builder.build(URI, text, cursor, rng.choice(["spm", "psm_line"]))
        assert prompt.prefix_tokens + prompt.suffix_tokens <= budget.tokens
        assert prompt.suffix_tokens <= budget.suffix_tokens
        assert prompt.start <= cursor <= prompt.end
        assert prompt.start == 0 or text[prompt.start - 1] == "\n"
        assert prompt.end == len(text) or text[prompt.end - 1] == "\n"
        assert prompt.ids == layout_ids(
            prompt.layout, tok, text, cursor, prompt.start, prompt.end
        )


def test_edit_above_the_window_shifts_it_without_a_move(tok: Tokenizer) -> None:
    budget = ContextBudget(tokens=200)
    builder = PromptBuilder(tok, budget)
    text = SOURCE[:6000]
    cursor = text.index("\n", 5000) + 1
    before = builder.build(URI, text, cursor)
    assert before.start > 100
    edited = "# a new first line\n" + text
    after = builder.build(URI, edited, cursor + 19)
    assert (after.start, after.end) == (before.start + 19, before.end + 19)
    assert after.ids == before.ids and builder.window_moves == 0


def test_edits_above_the_window_and_at_the_cursor_together_move_nothing(
    tok: Tokenizer,
) -> None:
    builder = PromptBuilder(tok, ContextBudget(tokens=200))
    text = SOURCE[:6000]
    cursor = text.index("\n", 5000) + 1
    before = builder.build(URI, text, cursor)
    # Several edits reach the builder at once: a line deleted far above, then typing.
    first_line = text.index("\n") + 1
    edited = text[first_line:cursor] + "x" + text[cursor:]
    after = builder.build(URI, edited, cursor - first_line + 1)
    assert after.start == before.start - first_line
    assert after.ids[: len(before.ids)] == before.ids and builder.window_moves == 0


def test_deleting_much_before_the_cursor_moves_the_start_back(tok: Tokenizer) -> None:
    budget = ContextBudget(tokens=200)
    builder = PromptBuilder(tok, budget)
    text = SOURCE[:6000]
    cursor = text.index("\n", 5000) + 1
    before = builder.build(URI, text, cursor)
    cut_from = text.index("\n", before.start + 60) + 1
    edited = text[:cut_from] + text[cursor - 1 :]  # a block deleted just above the cursor
    after = builder.build(URI, edited, cut_from + 1)
    assert after.start < before.start
    # Placed with a jump's worth of room to type, and not so short that it moves again.
    limit = budget.tokens - after.suffix_tokens
    jump = budget.jump(limit)
    assert jump <= after.prefix_tokens <= limit - jump
    assert builder.window_moves == 1


def test_forgotten_document_is_placed_afresh_without_a_move(tok: Tokenizer) -> None:
    builder = PromptBuilder(tok, ContextBudget(tokens=200))
    text = SOURCE[:6000]
    first = builder.build(URI, text, len(text))
    builder.forget(URI)
    again = builder.build(URI, text + "x = 1\n" * 100, len(text) + 600)
    assert again.start > first.start and builder.window_moves == 0


# -- cached logits equal a fresh forward ----------------------------------------------------


def edit_session(rng: random.Random, text: str, steps: int) -> Iterator[tuple[str, int, str]]:
    """Random edits as an editor makes them; yields (text, cursor, what was done)."""
    cursor = text.index("\n", len(text) // 2) + 1
    history: list[tuple[str, int]] = []
    rare = ["delete", "paste", "above", "below", "undo", "move"]
    kinds = rare + [rng.choice(["type"] * 10 + rare) for _ in range(steps - len(rare))]
    rng.shuffle(kinds)  # every kind of edit at least once, typing most often
    for kind in kinds:
        history.append((text, cursor))
        if kind == "type":
            key = rng.choice("abcxyz_ ():=.,\n")
            text, cursor = text[:cursor] + key + text[cursor:], cursor + 1
        elif kind == "delete":
            n = min(cursor, rng.randint(1, 4))
            text, cursor = text[: cursor - n] + text[cursor:], cursor - n
        elif kind == "paste":
            start = rng.randrange(len(SOURCE) - 300)
            block = SOURCE[start : start + rng.randint(20, 300)]
            text, cursor = text[:cursor] + block + text[cursor:], cursor + len(block)
        elif kind in ("above", "below"):
            at = rng.randrange(0, max(1, cursor - 400)) if kind == "above" else rng.randrange(
                min(len(text), cursor + 400), len(text) + 1
            )
            n = rng.randint(0, 30)
            insert = rng.choice(["", "# note\n", "pass\n", "x"])
            text = text[:at] + insert + text[at + n :]
            if kind == "above":
                cursor += len(insert) - min(n, max(0, cursor - at))
        elif kind == "undo" and len(history) > 2:
            text, cursor = history[rng.randrange(len(history) - 2)]
        elif kind == "move":
            cursor = rng.randrange(len(text) + 1)
        cursor = max(0, min(cursor, len(text)))
        yield text, cursor, kind


def small_lm(tok: Tokenizer, multi_query: bool, attn: str) -> GPTBigCodeForCausalLM:
    torch.manual_seed(0)
    config = GPTBigCodeConfig(
        vocab_size=tok.vocab_size, n_positions=512, n_embd=64, n_layer=2, n_head=4,
        multi_query=multi_query, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=0.3,  # peaked attention: a wrong position or mask shows in the logits
    )
    return GPTBigCodeForCausalLM(config, attn_implementation=attn).eval()


def check_session(
    tok: Tokenizer, lm: GPTBigCodeForCausalLM, seed: str, steps: int, layouts_per_step: int
) -> tuple[PromptBuilder, int]:
    """Replay random edits; at each, the cached path's logits must equal a full forward's.
    Returns the prompt builder and how many prompts were mostly served from the store."""
    cache = PrefixStore()
    decoder = make_decoder(lm, "torch")
    builder = PromptBuilder(tok, ContextBudget(tokens=120))
    layouts = ["spm", "psm_line", "plain"]
    rng = random.Random(seed)
    mostly_cached = 0
    for step, (text, cursor, kind) in enumerate(edit_session(rng, SOURCE[:5000], steps)):
        for i in range(layouts_per_step):
            layout = layouts[(step + i) % len(layouts)]
            prompt = builder.build(URI, text, cursor, layout)
            with cache.open(prompt.key, decoder) as session:
                got = session.prefill(prompt.ids, all_logits=True)
            with torch.inference_mode():
                full = lm(torch.tensor([prompt.ids])).logits[0]  # (T, vocab)
            expected = full[got.reused :] if got.computed else full[-1:]
            try:  # logits of size ~10 under these weights: fp32 summation order shows at 1e-5
                torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-4)
            except AssertionError as exc:
                raise AssertionError(f"step {step} ({kind}), layout {layout}: {exc}") from None
            mostly_cached += got.reused > len(prompt.ids) // 2
    return builder, mostly_cached


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("multi_query", [True, False], ids=["mqa", "mha"])
def test_cached_logits_equal_a_full_forward_after_random_edits(
    tok: Tokenizer, multi_query: bool, attn: str
) -> None:
    lm = small_lm(tok, multi_query, attn)
    builder, mostly_cached = check_session(tok, lm, f"{multi_query}-{attn}", 30, 1)
    assert mostly_cached >= 10 and builder.window_moves > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("multi_query", [True, False], ids=["mqa", "mha"])
def test_cached_logits_equal_a_full_forward_over_long_sessions(
    tok: Tokenizer, multi_query: bool, seed: int
) -> None:
    lm = small_lm(tok, multi_query, "sdpa")
    builder, mostly_cached = check_session(tok, lm, f"long-{seed}", 150, 3)
    assert mostly_cached >= 300 and builder.window_moves > 10
