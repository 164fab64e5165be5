"""Cursor moves cost model work in proportion to the move and a bounded suffix, not to the
file: psm_line prompts with the suffix capped, a cut that stays put while typing, and the
document's spare (its longest prompt) kept under the byte budget."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch
from lsp_fixtures import train_tokenizer

from cache import ContextBudget, PrefixStore, Prompt, PromptBuilder, layout_ids
from cache.window import SUFFIX_CAP, line_start
from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, KVCache
from model.decoders import Decoder, make_decoder
from model.tokenizer import Tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SPECIALS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]
URI = "file:///textwrap.py"
SOURCE = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
TEXT = SOURCE[: SOURCE.index("\n", 9000) + 1]  # about 250 lines
FIM_TOKENS = 3

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    corpus = [(STDLIB / name).read_text(encoding="utf-8") for name in ("string.py", "shlex.py")]
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(1024, SPECIALS, corpus).save(str(path))
    return Tokenizer.from_file(path)


@pytest.fixture(scope="module")
def decoder(tok: Tokenizer) -> Decoder:
    torch.manual_seed(0)
    config = GPTBigCodeConfig(
        vocab_size=tok.vocab_size, n_positions=4096, n_embd=32, n_layer=2, n_head=4,
        multi_query=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=0.3,  # peaked attention: a wrong position shows in the logits
    )
    return make_decoder(GPTBigCodeForCausalLM(config, attn_implementation="sdpa").eval(), "torch")


class Editor:
    """A document, its cursor, and requests through a prompt builder and a store."""

    def __init__(self, tok: Tokenizer, decoder: Decoder, layout: str = "psm_line",
                 store: PrefixStore | None = None, budget: int = 4000) -> None:
        self.tok, self.decoder, self.layout = tok, decoder, layout
        self.builder = PromptBuilder(tok, ContextBudget(tokens=budget))  # the whole TEXT
        self.store = PrefixStore() if store is None else store
        self.text, self.cursor = TEXT, 0
        self.prompt: Prompt | None = None

    def go(self, line: int) -> None:
        """Put the cursor at the start of a line (0-based)."""
        self.cursor = 0
        for _ in range(line):
            self.cursor = self.text.index("\n", self.cursor) + 1

    def type(self, keys: str) -> None:
        self.text = self.text[: self.cursor] + keys + self.text[self.cursor :]
        self.cursor += len(keys)

    def ask(self, check_logits: bool = False) -> tuple[int, int]:
        """A request at the cursor: (tokens reused, tokens computed)."""
        prompt = self.prompt = self.builder.build(URI, self.text, self.cursor, self.layout)
        assert prompt.ids == layout_ids(self.layout, self.tok, self.text, self.cursor,
                                        prompt.start, prompt.end, prompt.cut)
        with self.store.open(prompt.key, self.decoder) as session:
            got = session.prefill(prompt.ids, all_logits=check_logits)
        if check_logits:
            with torch.inference_mode():
                full = self.decoder.model(torch.tensor([prompt.ids])).logits[0]  # (T, vocab)
            expected = full[got.reused :] if got.computed else full[-1:]
            torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-4)
        return got.reused, got.computed

    def tokens_before_line(self) -> int:
        """Tokens of the prompt's text from the window's start to the cursor's line."""
        assert self.prompt is not None
        text = self.text[self.prompt.start : line_start(self.text, self.cursor)]
        return len(self.tok.encode_text(text)) if text else 0

    def tokens(self, lo: int, hi: int) -> int:
        return len(self.tok.encode_text(self.text[lo:hi]))


# -- moves ----------------------------------------------------------------------------------


def test_moving_back_reuses_the_prompt_up_to_the_new_line(
    tok: Tokenizer, decoder: Decoder
) -> None:
    editor = Editor(tok, decoder)
    editor.go(200)
    editor.ask()
    for line in (150, 60, 58):
        editor.go(line)
        reused, computed = editor.ask()
        # The boundary token at the line start may differ (a newline joins the indentation
        # after it into one token): at most two tokens before the line are recomputed.
        assert reused >= 1 + editor.tokens_before_line() - 2
        assert computed <= SUFFIX_CAP + FIM_TOKENS + 2


def test_a_near_move_back_in_a_file_longer_than_the_window_keeps_its_start(
    tok: Tokenizer, decoder: Decoder
) -> None:
    editor = Editor(tok, decoder, budget=2000)
    assert len(tok.encode_text(TEXT)) > 2000
    editor.go(200)
    editor.ask()
    assert editor.prompt is not None
    start = editor.prompt.start
    assert start > 0
    for line in (190, 185, 178):  # back less than a quarter of the window: see _fit_prefix
        editor.go(line)
        reused, computed = editor.ask()
        assert editor.prompt.start == start  # (the end follows the cursor: a bounded suffix)
        assert reused >= 1 + editor.tokens_before_line() - 2
        assert computed <= SUFFIX_CAP + FIM_TOKENS + 2


def test_moving_forward_computes_the_lines_moved_over_and_the_suffix(
    tok: Tokenizer, decoder: Decoder
) -> None:
    editor = Editor(tok, decoder, store=PrefixStore(spares=False))
    editor.go(30)
    editor.ask()
    for line in (34, 90, 200):
        assert editor.prompt is not None and editor.prompt.cut is not None
        # From the last prompt's cut: the text from there to its cursor (at most the suffix's
        # budget, see the typing tests) was after <fim_middle>.
        before = editor.prompt.cut
        editor.go(line)
        reused, computed = editor.ask()
        assert computed <= editor.tokens(before, editor.cursor) + SUFFIX_CAP + FIM_TOKENS + 2
        assert reused >= editor.tokens_before_line() - editor.tokens(before, editor.cursor)


def test_spm_moves_recompute_the_prompt(tok: Tokenizer, decoder: Decoder) -> None:
    """What the prefix-first layout avoids: with the suffix first, a move keeps 2 tokens."""
    editor = Editor(tok, decoder, layout="spm")
    editor.go(200)
    editor.ask()
    editor.go(150)
    reused, computed = editor.ask()
    assert reused <= 4 and computed > 10 * SUFFIX_CAP


def test_typing_after_a_move_new_lines_included_reuses_all_but_the_tail(
    tok: Tokenizer, decoder: Decoder
) -> None:
    editor = Editor(tok, decoder)
    editor.go(120)
    editor.ask()
    editor.go(80)
    editor.ask()
    for key in "    total = width * 2\n    if total:\n        return total\n":
        editor.type(key)
        reused, computed = editor.ask()
        assert computed <= 3, repr(key)
    assert editor.prompt is not None and editor.prompt.cut is not None
    assert editor.prompt.cut < line_start(editor.text, editor.cursor)  # the cut stayed put


def test_the_cut_moves_to_the_cursor_line_once_the_typed_lines_outgrow_the_suffix_budget(
    tok: Tokenizer, decoder: Decoder
) -> None:
    editor = Editor(tok, decoder)
    editor.go(100)
    editor.ask()
    cuts = set()
    for _ in range(40):
        editor.type("value = compute(width, height)\n")
        editor.ask()
        assert editor.prompt is not None and editor.prompt.cut is not None
        cuts.add(editor.prompt.cut)
        assert editor.tokens(editor.prompt.cut, editor.cursor) <= SUFFIX_CAP
    assert 2 <= len(cuts) <= 20


def test_cached_logits_equal_a_full_forward_across_moves_and_typing(
    tok: Tokenizer, decoder: Decoder
) -> None:
    editor = Editor(tok, decoder)
    for line in (200, 40, 190, 41, 120):
        editor.go(line)
        editor.ask(check_logits=True)
        for key in "x = 1\n":
            editor.type(key)
            editor.ask(check_logits=True)


# -- the document's spare -------------------------------------------------------------------


def test_moving_back_then_forward_again_reuses_the_spare_prefix(
    tok: Tokenizer, decoder: Decoder
) -> None:
    with_spare, single = Editor(tok, decoder), Editor(tok, decoder, store=PrefixStore(spares=False))
    for editor in (with_spare, single):
        editor.go(200)
        editor.ask()
        editor.go(20)
        editor.ask()
        editor.go(180)
    reused, computed = with_spare.ask()
    assert reused >= with_spare.tokens_before_line() - 2
    assert computed <= SUFFIX_CAP + FIM_TOKENS + 2
    assert single.ask()[1] > 5 * SUFFIX_CAP  # lines 20-180 again


def written(ids: list[int], capacity: int | None = None) -> KVCache:
    config = GPTBigCodeConfig(vocab_size=97, n_positions=1024, n_embd=32, n_layer=2, n_head=4)
    kv = KVCache(config, capacity=capacity or len(ids))
    kv.buffer.normal_()
    kv.length = len(ids)
    return kv


KEY = (URI, "psm_line")


def test_a_prompt_sharing_less_leaves_the_longer_entry_whole_as_the_spare() -> None:
    store = PrefixStore()
    long = list(range(1, 301))
    kv = written(long)
    store.commit(KEY, long, kv, torch.zeros(97))
    copied = kv.buffer[:, :, :, :, :100].clone()
    found = store.lookup(KEY, long[:100] + [7, 8])
    spare, entry = store.spare(KEY), store.entry(KEY)
    assert spare is not None and spare.kv is kv and spare.ids == long and kv.length == 300
    assert entry is not None and found.kv is entry.kv and found.kv is not kv
    assert found.reused == 100 and entry.ids == long[:100]
    assert torch.equal(found.kv.buffer[:, :, :, :, :100], copied)
    assert store.stats.entries == 2 and store.stats.cpu_bytes == spare.nbytes + entry.nbytes
    # Back where the spare was: it is the entry again, whole.
    again = store.lookup(KEY, long[:250] + [9])
    assert again.kv is kv and again.reused == 250


def test_a_shorter_entry_is_truncated_in_place_while_a_longer_spare_is_kept() -> None:
    store = PrefixStore()
    long, short = list(range(1, 401)), list(range(1, 201))
    store.commit(KEY, long, written(long))
    store.lookup(KEY, long[:150])  # the 400-token entry becomes the spare
    kv = written(short[:149] + [5])
    store.commit(KEY, short[:149] + [5], kv)
    found = store.lookup(KEY, short[:20])
    spare = store.spare(KEY)
    assert found.kv is kv and kv.length == 19 and spare is not None and len(spare.ids) == 400


def test_spares_are_evicted_first_and_the_budget_holds() -> None:
    size = written(list(range(300))).nbytes
    store = PrefixStore(cpu_bytes=2 * size + size // 2)
    other = (URI.replace("textwrap", "other"), "psm_line")
    store.commit(other, list(range(1, 301)), written(list(range(300))))
    store.commit(KEY, list(range(1, 301)), written(list(range(300))))
    found = store.lookup(KEY, list(range(1, 101)) + [7])  # a spare: 300 + copy of 100 + 128
    assert found.kv is not None and store.spare(KEY) is not None
    found.kv.length = 102
    store.commit(KEY, list(range(1, 101)) + [7, 8], found.kv)
    assert store.spare(KEY) is None and store.entry(other) is not None
    assert store.stats.evictions == 1 and store.stats.cpu_bytes <= 2 * size + size // 2


def test_closing_a_document_drops_its_spare_too() -> None:
    store = PrefixStore()
    store.commit(KEY, list(range(1, 301)), written(list(range(300))))
    store.lookup(KEY, [1, 2, 3])
    assert store.spare(KEY) is not None
    assert store.drop(URI) == 1
    assert store.spare(KEY) is None and store.stats.entries == 0 and store.stats.cpu_bytes == 0


def test_without_spares_the_entry_is_truncated_in_place() -> None:
    store = PrefixStore(spares=False)
    kv = written(list(range(300)))
    store.commit(KEY, list(range(1, 301)), kv)
    found = store.lookup(KEY, [1, 2, 3])
    assert found.kv is kv and kv.length == 2 and store.spare(KEY) is None
