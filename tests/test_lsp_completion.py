"""The completion pipeline without LSP: prompt repair and cache reuse across keystrokes, the
generation's stop rules, cancellation between tokens, layouts; type-through and percentiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
from lsp_fixtures import SAMPLE, STARCODER_SPECIALS, build_checkpoint

from lsp_server.completion import (
    CompletionEngine,
    CompletionRequest,
    ModelChoice,
    RequestLog,
    RequestRecord,
    TypeThrough,
    load_engine,
    percentile,
)
from lsp_server.options import Options
from lsp_server.prompt import split_unstable_tail
from model import GPTBigCodeForCausalLM, Tokenizer

TEXT = SAMPLE.read_text(encoding="utf-8")
URI = "file:///unit/sample.py"
LINE_END = TEXT.index("    a, b = 0, 1") + len("    a, b = 0, 1")
MID_LINE = TEXT.index("math.hypot(") + len("math.hypot(")


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("unit-model") / "tiny", n_positions=512)


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(folder)


@pytest.fixture
def engine(folder: Path) -> CompletionEngine:
    options = Options(model=str(folder), max_new_tokens=16)
    return load_engine(ModelChoice.from_options(options), options)


class ScriptedModel(GPTBigCodeForCausalLM):
    """A real forward pass whose logits are pushed toward a script: after the prompt, the
    k-th next token is script[k] (a large bonus, so masking can still overrule it)."""

    script: list[int]
    calls: int

    def forward(self, input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(input_ids, *args, **kwargs)
        self.calls = 0 if input_ids.shape[1] > 1 else self.calls + 1
        if self.calls < len(self.script):
            out.logits[..., self.script[self.calls]] += 1e4
        return out


def scripted(
    folder: Path, tokenizer: Tokenizer, cursor: int, texts: list[str | int], **options: Any
) -> Any:
    """An engine whose model emits, at `cursor` of TEXT, the tokens of `texts` (strings, or
    ids as they are), after re-typing the end of the text before the cursor that partial-
    token repair took off the prompt."""
    model = cast(ScriptedModel, GPTBigCodeForCausalLM.from_pretrained(folder))
    model.__class__ = ScriptedModel
    retyped = split_unstable_tail(tokenizer, TEXT[:cursor])[1]
    assert retyped  # the script must not be overruled by re-typing: it starts with it
    script: list[int] = tokenizer.encode(retyped)
    for piece in texts:
        script += tokenizer.encode(piece) if isinstance(piece, str) else [piece]
    model.script, model.calls = script, 0
    return CompletionEngine(model, tokenizer, Options(**{"max_new_tokens": 32, **options}))


# ---- cache reuse and partial-token repair


def test_asking_again_at_the_same_place_runs_no_prompt_token(engine: CompletionEngine) -> None:
    first = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    again = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert first.computed_tokens == first.prompt_tokens > 0
    assert again.computed_tokens == 0 and again.reused_tokens == again.prompt_tokens
    assert again.text == first.text and again.token_ids == first.token_ids  # greedy
    assert again.model_steps == again.new_tokens - 1  # no prefill step, one per token after


def test_typing_inside_a_word_keeps_the_prompt_and_retypes_the_word(
    engine: CompletionEngine, tokenizer: Tokenizer
) -> None:
    text = TEXT[:LINE_END] + "\n    resu" + TEXT[LINE_END:]
    cursor = LINE_END + len("\n    resu")
    first = engine.complete(CompletionRequest(URI, text, cursor))
    typed = text[:cursor] + "l" + text[cursor:]
    second = engine.complete(CompletionRequest(URI, typed, cursor + 1))
    # The prompt ends before " resu" / " resul": one more letter changes no prompt token.
    assert second.prompt_tokens == first.prompt_tokens and second.computed_tokens == 0
    for done, word in ((first, " resu"), (second, " resul")):
        assert tokenizer.decode_bytes(list(done.token_ids)).startswith(word.encode())


def test_constrained_start_overrules_the_model(folder: Path, tokenizer: Tokenizer) -> None:
    engine = scripted(folder, tokenizer, LINE_END, ["zzz", " = 1"])  # the model wants "zzz"
    text = TEXT[:LINE_END] + "\n    tot" + TEXT[LINE_END:]
    done = engine.complete(CompletionRequest(URI, text, LINE_END + len("\n    tot")))
    assert tokenizer.decode_bytes(list(done.token_ids)).startswith(b" tot")
    assert not done.generated.startswith("tot")  # what was typed is not suggested again


# ---- stop rules


def test_generation_stops_at_the_first_line_break_mid_line(
    folder: Path, tokenizer: Tokenizer
) -> None:
    engine = scripted(folder, tokenizer, MID_LINE, ["self.x", "\n", "next_line = 2"])
    done = engine.complete(CompletionRequest(URI, TEXT, MID_LINE))
    assert done.stop_reason == "newline" and done.generated == "self.x"
    assert tokenizer.decode(list(done.token_ids)).endswith("\n")  # stopped right after it


def test_generation_goes_on_over_line_breaks_at_a_line_end(
    folder: Path, tokenizer: Tokenizer
) -> None:
    engine = scripted(folder, tokenizer, LINE_END, ["\n    b = 2\n    c = 3", 0])
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.stop_reason == "eos"
    assert done.generated == "\n    b = 2\n    c = 3"
    assert done.text == "\n    b = 2\n    c = 3"


def test_stop_string_cuts_the_generation(folder: Path, tokenizer: Tokenizer) -> None:
    engine = scripted(folder, tokenizer, LINE_END, ["\n    x = 1;;\n    y = 2"], stop=[";;"])
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.stop_reason == "stop" and done.generated == "\n    x = 1"


@pytest.mark.parametrize("special", STARCODER_SPECIALS)
def test_special_tokens_end_the_generation(
    folder: Path, tokenizer: Tokenizer, special: str
) -> None:
    special_id = tokenizer.token_to_id(special)
    assert special_id is not None
    engine = scripted(folder, tokenizer, LINE_END, ["\n    x = 1", special_id, "\n    y = 2"])
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.generated == "\n    x = 1" and special not in done.text
    assert done.stop_reason == ("eos" if special_id == 0 else "special")


def test_token_budget_bounds_the_generation(folder: Path, tokenizer: Tokenizer) -> None:
    engine = scripted(folder, tokenizer, LINE_END, [" x" * 40], max_new_tokens=5)
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.stop_reason == "max_tokens" and done.retyped_tokens >= 1
    assert done.new_tokens == done.retyped_tokens + 5  # re-typing is outside the budget
    assert done.generated == tokenizer.decode(tokenizer.encode(" x" * 40)[:5])
    assert done.model_steps == done.new_tokens  # the prompt, then one per token but the last


def test_time_budget_stops_the_generation(engine: CompletionEngine) -> None:
    options = Options(model="x", max_new_tokens=400, time_budget_ms=1)
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END), options)
    assert done.stop_reason == "time" and done.new_tokens < 400


def test_cancellation_is_checked_between_tokens(engine: CompletionEngine) -> None:
    polls = []

    def cancelled() -> bool:
        polls.append(True)
        return len(polls) > 3

    options = Options(model="x", max_new_tokens=100)
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END), options, cancelled)
    assert done.cancelled and done.text == ""
    assert done.new_tokens == 3  # polled before the prompt, then after each token
    assert done.model_steps == 1 + 2


def test_postprocessing_keeps_the_suggestion_in_its_block(
    folder: Path, tokenizer: Tokenizer
) -> None:
    engine = scripted(folder, tokenizer, LINE_END, ["\n    b = 2\nprint(b)\n"])
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.text == "\n    b = 2"


# ---- layouts


def test_layout_follows_the_options_and_the_tokenizer(
    engine: CompletionEngine, tmp_path: Path
) -> None:
    assert engine.layout(Options()) == "spm"
    assert engine.layout(Options(fim_layout="psm")) == "psm_line"
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END), Options(fim_layout="psm"))
    assert done.layout == "psm_line" and done.prompt_tokens > 0
    plain = build_checkpoint(tmp_path / "plain", specials=["<|endoftext|>"], n_positions=256)
    options = Options(model=str(plain), max_new_tokens=4)
    no_fim = load_engine(ModelChoice.from_options(options), options)
    done = no_fim.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.layout == "plain" and 0 < done.new_tokens - done.retyped_tokens <= 4


def test_context_budget_fits_prompt_and_generation_in_the_positions(
    engine: CompletionEngine,
) -> None:
    long_text = TEXT * 8  # far beyond the 512 positions
    options = Options(model="x", max_new_tokens=16)
    done = engine.complete(CompletionRequest(URI, long_text, len(long_text) // 2), options)
    assert done.prompt_tokens + done.new_tokens <= 512
    assert done.stop_reason != "context"


# ---- type-through, log


def test_type_through_answers_while_typing_follows_the_suggestion() -> None:
    memory = TypeThrough()
    memory.remember(URI, "x = ", "\nrest", "foo(1)")
    assert memory.answer(URI, "x = ", "\nrest") == "foo(1)"
    assert memory.answer(URI, "x = fo", "\nrest") == "o(1)"
    assert memory.answer(URI, "x = fa", "\nrest") is None  # typed something else
    assert memory.answer(URI, "x = fo", "\nchanged") is None  # the text after changed
    assert memory.answer(URI, "x = foo(1)", "\nrest") is None  # all of it typed
    memory.forget(URI)
    assert memory.answer(URI, "x = ", "\nrest") is None


def test_latency_percentiles_cover_answered_requests_only() -> None:
    log = RequestLog()
    for ms in (10.0, 20.0, 30.0, 40.0):
        log.add(RequestRecord("inline", "model", ms, model_ms=ms / 2))
    log.add(RequestRecord("inline", "superseded", 1000.0))
    latency = log.latency()
    assert latency["count"] == 4 and latency["p50"] == 25.0 and latency["modelP50"] == 12.5
    assert latency["p95"] == pytest.approx(38.5)
    assert log.counts == {"model": 4, "superseded": 1}
    assert percentile([], 50) is None


def test_missing_checkpoint_is_named_in_the_error(tmp_path: Path) -> None:
    options = Options(model=str(tmp_path / "absent"))
    with pytest.raises(Exception, match="absent"):
        load_engine(ModelChoice.from_options(options), options)


def test_int8_option_quantises_the_model_and_still_completes(folder: Path) -> None:
    from model.quantize import Int8Linear

    options = Options(model=str(folder), max_new_tokens=8, dtype="bfloat16", quantize="int8")
    engine = load_engine(ModelChoice.from_options(options), options)
    layers = [m for m in engine.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 4 * engine.model.config.n_layer + 1  # every block Linear + lm_head
    done = engine.complete(CompletionRequest("file:///q.py", TEXT, LINE_END))
    assert done.model_steps > 0 and done.new_tokens > 0


def test_compile_decode_option_puts_the_decode_products_on_fast_kernels(folder: Path) -> None:
    from model.fastpath import DecodeLinear

    options = Options(model=str(folder), max_new_tokens=8, dtype="bfloat16",
                      compile_decode=True)
    engine = load_engine(ModelChoice.from_options(options), options)
    layers = [m for m in engine.model.modules() if isinstance(m, DecodeLinear)]
    assert len(layers) == 4 * engine.model.config.n_layer + 1
    assert all(layer.use_native and layer.inductor for layer in layers)
    done = engine.complete(CompletionRequest("file:///c.py", TEXT, LINE_END))
    assert done.model_steps > 0 and done.new_tokens > 0


def test_fast_decode_by_default_native_and_inductor_only_where_it_pays(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lsp_server import completion

    model = GPTBigCodeForCausalLM.from_pretrained(folder, dtype="bfloat16")
    auto = ModelChoice("m", "cpu", torch.bfloat16)
    native = {"native": True, "inductor": False}
    # native kernels always on the CPU; Inductor not for a few hundred k parameters
    assert completion.fast_decode_settings(auto, model) == native
    monkeypatch.setattr(completion, "AUTO_COMPILE_PARAMETERS", model.num_parameters())
    monkeypatch.setattr(completion, "native_decode_available", lambda dtype: True)
    assert completion.fast_decode_settings(auto, model) == native  # the native kernel runs
    monkeypatch.setattr(completion, "native_decode_available", lambda dtype: False)
    assert completion.fast_decode_settings(auto, model) == {"native": True, "inductor": True}
    assert completion.fast_decode_settings(auto, model.float()) == native  # fp32: no Inductor
    off = ModelChoice("m", "cpu", torch.bfloat16, compile_decode=False)
    assert completion.fast_decode_settings(off, model.bfloat16()) is None
    monkeypatch.setattr(completion, "AUTO_COMPILE_PARAMETERS", 10**12)
    on = ModelChoice("m", "cpu", torch.bfloat16, compile_decode=True)
    assert completion.fast_decode_settings(on, model) == {"native": True, "inductor": True}


def test_static_decoder_completes_as_the_general_path_across_keystrokes(
    folder: Path, tokenizer: Tokenizer
) -> None:
    """The GPU's decode path (static buffers; eager on the CPU) must not change a suggestion,
    nor what the prefix cache keeps for the next keystroke."""
    from model.static_decode import StaticDecoder

    options = Options(model=str(folder), max_new_tokens=12)
    model = GPTBigCodeForCausalLM.from_pretrained(folder)
    plain = CompletionEngine(model, tokenizer, options)
    static = CompletionEngine(model, tokenizer, options, decoder=StaticDecoder(model))
    static.warm_up()  # runs a step on the decoder, as load_engine does to capture the graph
    text, cursor = TEXT, LINE_END
    for typed in ("", "\n    r", "e", "s"):
        text = text[:cursor] + typed + text[cursor:]
        cursor += len(typed)
        ours = static.complete(CompletionRequest(URI, text, cursor))
        reference = plain.complete(CompletionRequest(URI, text, cursor))
        assert ours.token_ids == reference.token_ids and ours.text == reference.text
        assert (ours.reused_tokens, ours.computed_tokens) == (
            reference.reused_tokens, reference.computed_tokens)
    assert ours.new_tokens > 1
