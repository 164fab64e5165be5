"""The completion pipeline without LSP: prompt repair and cache reuse across keystrokes, the
generation's stop rules, cancellation between tokens, layouts; type-through and percentiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
from lsp_fixtures import SAMPLE, STARCODER_SPECIALS, build_checkpoint

from lsp_server.engine import (
    Completion,
    CompletionRequest,
    Engine,
    EngineSettings,
    GenerationParams,
    ModelChoice,
    load_engine,
)
from lsp_server.engine.local import LocalBackend
from lsp_server.engine.repair import split_unstable_tail
from lsp_server.options import Options
from model import GPTBigCodeForCausalLM, KVCache, Tokenizer
from model.decoders import Decoder, make_decoder

TEXT = SAMPLE.read_text(encoding="utf-8")
URI = "file:///unit/sample.py"
LINE_END = TEXT.index("    a, b = 0, 1") + len("    a, b = 0, 1")
MID_LINE = TEXT.index("math.hypot(") + len("math.hypot(")


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread


class Harness:
    """An engine driven as the server drives it: options become the engine's settings (a
    `configure` when they change) and each request's generation parameters."""

    def __init__(self, engine: Engine, options: Options) -> None:
        self.engine, self.options = engine, options

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def complete(self, request: CompletionRequest, options: Options | None = None,
                 cancelled: Any = lambda: False) -> Completion:
        options = options or self.options
        settings = EngineSettings.from_options(options)
        if settings != self.engine.settings:
            self.engine.configure(settings)
        return self.engine.complete(request, GenerationParams.from_options(options), cancelled)


def load(options: Options) -> Harness:
    return Harness(load_engine(ModelChoice.from_options(options),
                               EngineSettings.from_options(options)), options)


def harness(model: GPTBigCodeForCausalLM, tokenizer: Tokenizer, options: Options,
            decoder: Decoder | None = None) -> Harness:
    backend = LocalBackend(model, tokenizer, decoder or make_decoder(model, "auto"))
    return Harness(Engine(backend, EngineSettings.from_options(options)), options)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("unit-model") / "tiny", n_positions=512)


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(folder)


@pytest.fixture
def engine(folder: Path) -> Harness:
    return load(Options(model=str(folder), max_new_tokens=16))


class ScriptedDecoder:
    """A real decoder whose logits are pushed toward a script: after the prompt, the k-th
    next token is script[k] (a large bonus, so masking can still overrule it)."""

    def __init__(self, decoder: Decoder, script: list[int]) -> None:
        self.decoder, self.script, self.calls = decoder, script, 0
        self.model, self.path = decoder.model, decoder.path

    def push(self, logits: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # the decoders' logits are inference tensors
            if self.calls < len(self.script):
                logits[..., self.script[self.calls]] += 1e4
        return logits

    def prefill(self, ids: torch.Tensor, kv: KVCache, logits_to_keep: int = 1) -> torch.Tensor:
        self.calls = 0
        return self.push(self.decoder.prefill(ids, kv, logits_to_keep))

    def start(self, kv: KVCache) -> None:
        self.decoder.start(kv)

    def step(self, token: int) -> torch.Tensor:
        self.calls += 1
        return self.push(self.decoder.step(token).clone())


def scripted(
    folder: Path, tokenizer: Tokenizer, cursor: int, texts: list[str | int], **options: Any
) -> Harness:
    """An engine whose model emits, at `cursor` of TEXT, the tokens of `texts` (strings, or
    ids as they are), after re-typing the end of the text before the cursor that partial-
    token repair took off the prompt."""
    model = GPTBigCodeForCausalLM.from_pretrained(folder)
    retyped = split_unstable_tail(tokenizer, TEXT[:cursor])[1]
    assert retyped  # the script must not be overruled by re-typing: it starts with it
    script: list[int] = tokenizer.encode(retyped)
    for piece in texts:
        script += tokenizer.encode(piece) if isinstance(piece, str) else [piece]
    decoder = ScriptedDecoder(make_decoder(model, "torch"), script)
    return harness(model, tokenizer, Options(**{"max_new_tokens": 32, **options}),
                   cast(Decoder, decoder))


# ---- cache reuse and partial-token repair


def test_asking_again_at_the_same_place_runs_no_prompt_token(engine: Harness) -> None:
    first = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    again = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert first.computed_tokens == first.prompt_tokens > 0
    assert again.computed_tokens == 0 and again.reused_tokens == again.prompt_tokens
    assert again.text == first.text and again.token_ids == first.token_ids  # greedy
    assert again.model_steps == again.new_tokens - 1  # no prefill step, one per token after


def test_typing_inside_a_word_keeps_the_prompt_and_retypes_the_word(
    engine: Harness, tokenizer: Tokenizer
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


def test_budget_stop_cuts_back_to_a_clean_boundary(folder: Path, tokenizer: Tokenizer) -> None:
    piece = "\n    b = 2\n    c = call(ar"
    budget = len(tokenizer.encode(piece))
    engine = scripted(folder, tokenizer, LINE_END, [piece, " + 1)"], max_new_tokens=budget)
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.stop_reason == "max_tokens" and done.generated == piece
    assert done.text == "\n    b = 2"  # never `c = call(ar`


def test_a_loop_stops_the_generation_and_keeps_its_first_copy(
    folder: Path, tokenizer: Tokenizer
) -> None:
    line = "\n    total = 1"
    engine = scripted(folder, tokenizer, LINE_END, [line * 8], max_new_tokens=60)
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.stop_reason == "repetition" and done.text == line
    assert done.new_tokens - done.retyped_tokens < len(tokenizer.encode(line * 3))


def test_each_token_comes_with_its_log_probability(engine: Harness) -> None:
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert len(done.token_logprobs) == len(done.token_ids) == done.new_tokens > 0
    assert all(lp <= 0 for lp in done.token_logprobs)
    assert done.confidence is None or 0 <= done.confidence <= 1


def test_tokens_the_model_is_sure_of_pass_any_threshold_below_one(
    folder: Path, tokenizer: Tokenizer
) -> None:
    engine = scripted(folder, tokenizer, LINE_END, ["\n    b = 2", 0], min_confidence=0.99)
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.text == "\n    b = 2" and done.confidence == pytest.approx(1.0)
    assert not done.hidden


def test_confidence_gate_hides_what_the_model_is_unsure_of(engine: Harness) -> None:
    request = CompletionRequest(URI, TEXT, LINE_END)
    shown = engine.complete(request, Options(model="x", max_new_tokens=16, min_confidence=0.0))
    assert shown.text and shown.confidence is not None and shown.confidence < 1  # random
    hidden = engine.complete(request, Options(model="x", max_new_tokens=16, min_confidence=1.0))
    assert hidden.text == "" and hidden.hidden
    assert hidden.confidence == shown.confidence  # the same greedy tokens, judged the same
    assert engine.status()["confidence"] == {"calibrated": 0.0, "hidden": 1, "cut": 0}


def test_time_budget_stops_the_generation(engine: Harness) -> None:
    options = Options(model="x", max_new_tokens=400, time_budget_ms=1)
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END), options)
    assert done.stop_reason == "time" and done.new_tokens < 400


def test_cancellation_is_checked_between_tokens(engine: Harness) -> None:
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
    engine: Harness, tmp_path: Path
) -> None:
    assert engine.layout() == "spm"
    engine.configure(EngineSettings.from_options(Options(fim_layout="psm")))
    assert engine.layout() == "psm_line"
    done = engine.complete(CompletionRequest(URI, TEXT, LINE_END), Options(fim_layout="psm"))
    assert done.layout == "psm_line" and done.prompt_tokens > 0
    plain = build_checkpoint(tmp_path / "plain", specials=["<|endoftext|>"], n_positions=256)
    options = Options(model=str(plain), max_new_tokens=4)
    no_fim = load(options)
    done = no_fim.complete(CompletionRequest(URI, TEXT, LINE_END))
    assert done.layout == "plain" and 0 < done.new_tokens - done.retyped_tokens <= 4


def test_auto_layout_puts_the_prefix_first_where_a_window_is_slow_to_compute(
    engine: Harness,
) -> None:
    """A cursor move recomputes the whole window in SPM: where that takes over a second (a
    large model on a CPU), "auto" puts the prefix first; where it is quick, SPM stays."""
    backend = engine.backend
    tokens = engine.builder.budget.tokens
    backend.prefill_rate = tokens / 2  # a window takes 2 s
    assert engine.layout() == "psm_line"
    backend.prefill_rate = tokens * 4  # a quarter of a second
    assert engine.layout() == "spm"
    backend.prefill_rate = None  # a GPU or a serving engine: no rate reported
    assert engine.layout() == "spm"
    engine.configure(EngineSettings.from_options(Options(fim_layout="spm")))
    backend.prefill_rate = 1.0
    assert engine.layout() == "spm"


def test_context_budget_fits_prompt_and_generation_in_the_positions(
    engine: Harness,
) -> None:
    long_text = TEXT * 8  # far beyond the 512 positions
    options = Options(model="x", max_new_tokens=16)
    done = engine.complete(CompletionRequest(URI, long_text, len(long_text) // 2), options)
    assert done.prompt_tokens + done.new_tokens <= 512
    assert done.stop_reason != "context"


# ---- loading


def test_missing_checkpoint_is_named_in_the_error(tmp_path: Path) -> None:
    options = Options(model=str(tmp_path / "absent"))
    with pytest.raises(Exception, match="absent"):
        load(options)


def test_int8_option_quantises_the_model_and_still_completes(folder: Path) -> None:
    from model.quantize import Int8Linear

    options = Options(model=str(folder), max_new_tokens=8, dtype="bfloat16", quantize="int8")
    engine = load(options)
    model = engine.backend.model
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 4 * model.config.n_layer + 1  # every block Linear + lm_head
    done = engine.complete(CompletionRequest("file:///q.py", TEXT, LINE_END))
    assert done.model_steps > 0 and done.new_tokens > 0


def test_decode_path_option_chooses_the_decoder_and_still_completes(folder: Path) -> None:
    from model import decoders

    bf16 = GPTBigCodeForCausalLM.from_pretrained(folder, dtype="bfloat16")
    # Without AVX512-BF16 the native path cannot run: a warning and the best path instead.
    native = "native-bf16" if decoders.native_kind(bf16)[0] else decoders.auto_path(bf16)
    for asked, runs in (("native", native), ("inductor", "inductor"), ("torch", "torch")):
        options = Options(model=str(folder), max_new_tokens=8, dtype="bfloat16",
                          decode_path=asked)
        engine = load(options)
        assert engine.backend.decoder.path == runs
        assert engine.status()["decode_path"] == runs
        assert bool(engine.warnings) == (runs != asked and not runs.startswith(asked))
        done = engine.complete(CompletionRequest("file:///c.py", TEXT, LINE_END))
        assert done.model_steps > 0 and done.new_tokens > 0


def test_a_decode_path_that_cannot_run_falls_back_to_the_best_one(folder: Path) -> None:
    options = Options(model=str(folder), max_new_tokens=4, decode_path="cuda-graph")
    engine = load(options)  # no GPU here: the CPU's best path, and the model still loads
    assert engine.backend.decoder.path == make_decoder(engine.backend.model, "auto").path
    assert len(engine.warnings) == 1 and "'cuda-graph'" in engine.warnings[0]
    assert "CUDA" in engine.warnings[0]
    assert engine.complete(CompletionRequest("file:///g.py", TEXT, LINE_END)).new_tokens > 0


def test_decode_path_by_default_native_and_inductor_only_where_it_pays(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model import decoders

    model = GPTBigCodeForCausalLM.from_pretrained(folder, dtype="bfloat16")
    # Where the native kernels run they are chosen; Inductor not for a few hundred k
    # parameters. Both cases on any CPU: the kernels' availability is set here.
    monkeypatch.setattr(decoders, "native_kind", lambda model: ("bf16", ""))
    assert decoders.auto_path(model) == "native"
    monkeypatch.setattr(decoders, "AUTO_COMPILE_PARAMETERS", model.num_parameters())
    assert decoders.auto_path(model) == "native"  # the native kernel runs
    monkeypatch.setattr(decoders, "native_kind", lambda model: (None, "no native kernels"))
    assert decoders.auto_path(model) == "inductor"
    assert decoders.auto_path(model.float()) == "torch"  # fp32: no Inductor
    assert make_decoder(model.bfloat16(), "torch").path == "torch"
    monkeypatch.setattr(decoders, "AUTO_COMPILE_PARAMETERS", 10**12)
    assert decoders.auto_path(model) == "torch"
    assert make_decoder(model, "inductor").path == "inductor"  # asked for: wherever it applies


def test_static_decoder_completes_as_the_general_path_across_keystrokes(
    folder: Path, tokenizer: Tokenizer
) -> None:
    """The GPU's decode path (static buffers; eager on the CPU) must not change a suggestion,
    nor what the prefix cache keeps for the next keystroke."""
    from lsp_server.engine.loading import warm_up
    from model.static_decode import GraphDecoder

    options = Options(model=str(folder), max_new_tokens=12)
    model = GPTBigCodeForCausalLM.from_pretrained(folder)
    plain = harness(model, tokenizer, options, make_decoder(model, "torch"))
    decoder = GraphDecoder(model, graph=False)
    static = harness(model, tokenizer, options, decoder)
    warm_up(model, decoder)  # runs a step on the decoder, as load_engine does to capture the graph
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
