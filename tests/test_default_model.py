"""The packaged default checkpoint: it loads, writes plausible Python, fills a middle, knows
modern third-party Python, and reads another file of the repository."""

from __future__ import annotations

import ast
import codeop
from pathlib import Path
from typing import Any

import pytest
import torch

from model import GPTBigCodeForCausalLM, Tokenizer
from model.checkpoint import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "config.json").is_file(),
    reason=f"no packaged default model in {DEFAULT_MODEL_DIR}",
)

STARCODER_IDS = {"<|endoftext|>": 0, "<fim_prefix>": 1, "<fim_middle>": 2, "<fim_suffix>": 3,
                 "<fim_pad>": 4, "<filename>": 5, "<reponame>": 18}

# A function between two of the same pattern, whose body is masked. The prefix stops before
# the newline: a bare newline token never precedes indentation in training text (the tokenizer
# merges a newline with the indentation after it), so the middle starts with that newline.
FIM_PREFIX_TEXT = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):"
FIM_SUFFIX_TEXT = "\n\n\ndef mul(a, b):\n    return a * b\n"


@pytest.fixture(scope="module")
def lm() -> GPTBigCodeForCausalLM:
    return GPTBigCodeForCausalLM.from_pretrained("default")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(DEFAULT_MODEL_DIR)


def greedy(lm: GPTBigCodeForCausalLM, tok: Tokenizer, prompt: list[int], n: int) -> list[int]:
    """New token ids of a greedy continuation, up to and without the first special token."""
    stops = sorted(tok.special_ids)
    out = lm.generate(torch.tensor([prompt]), max_new_tokens=n, eos_token_id=stops)
    new = out[0, len(prompt):].tolist()
    return new[:next((i for i, t in enumerate(new) if t in tok.special_ids), len(new))]


def complete_lines(text: str) -> str:
    """Text up to its last newline: the cut a line-by-line completion would show."""
    return text[:text.rfind("\n") + 1]


def longest_compiling_head(source: str) -> str:
    """The longest run of leading lines that compiles (a budget cut may end mid-statement)."""
    lines = source.splitlines(keepends=True)
    for end in range(len(lines), 0, -1):
        try:
            compile("".join(lines[:end]), "<generated>", "exec")
        except SyntaxError:
            continue
        return "".join(lines[:end])
    return ""


def starts_a_statement(line: str) -> bool:
    """Whether line, in a function body, is a complete statement or the start of one."""
    try:
        codeop.compile_command(f"def _():\n{line}\n", symbol="exec")
    except (SyntaxError, ValueError, OverflowError):
        return False
    return True


def test_default_checkpoint_matches_its_tokenizer(lm: GPTBigCodeForCausalLM, tok: Tokenizer
                                                  ) -> None:
    assert {t: tok.token_to_id(t) for t in STARCODER_IDS} == STARCODER_IDS
    assert lm.config.multi_query
    assert lm.config.vocab_size == tok.vocab_size
    assert lm.config.eos_token_id == tok.eos_token_id == 0
    assert tok.fim is not None and (tok.fim.prefix, tok.fim.middle, tok.fim.suffix) == (1, 2, 3)


# The packaged model (4M parameters) fills this middle exactly in SPM but not in PSM, the
# layout it learned least (4 of 600 held-out lines exact): the test pins what it should do,
# and fails loudly once it does (strict).
TOO_WEAK_YET = pytest.mark.xfail(
    strict=True, reason="the packaged model does not fill this body exactly in PSM yet"
)


def test_fibonacci_continuation_is_an_indented_function_body_that_compiles(
    lm: GPTBigCodeForCausalLM, tok: Tokenizer
) -> None:
    # The docstring is given: plain greedy decoding of docstring prose falls into a loop in a
    # model this small (the server's loop rule stops such text), and what is pinned here is
    # the code. No newline after the docstring, for the reason given at FIM_PREFIX_TEXT.
    prompt = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""'
    text = tok.decode(greedy(lm, tok, tok.encode(prompt), 96))
    assert "<|endoftext|>" not in text and "<fim_" not in text
    source = longest_compiling_head(prompt + complete_lines(text))
    assert source, text
    function = ast.parse(source).body[0]
    assert isinstance(function, ast.FunctionDef) and function.name == "fibonacci", text
    statements = [node for node in function.body
                  if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert statements, f"no statement besides a docstring: {text!r}"
    assert function.end_lineno is not None
    body = source.splitlines()[1:function.end_lineno]
    indents = {len(line) - len(line.lstrip(" ")) for line in body if line.strip()}
    assert indents and all(i > 0 and i % 4 == 0 for i in indents), text


def fill_middle(lm: GPTBigCodeForCausalLM, tok: Tokenizer, layout: str) -> str:
    """The greedy middle for FIM_PREFIX_TEXT / FIM_SUFFIX_TEXT in the PSM or SPM layout."""
    prefix, suffix = tok.encode(FIM_PREFIX_TEXT), tok.encode(FIM_SUFFIX_TEXT)
    assert tok.fim is not None
    p, m, s = tok.fim.prefix, tok.fim.middle, tok.fim.suffix
    if layout == "psm":
        prompt = [p, *prefix, s, *suffix, m]
    else:
        prompt = [p, s, *suffix, m, *prefix]
    return tok.decode(greedy(lm, tok, prompt, 24))


@pytest.mark.parametrize("layout", ["psm", "spm"])
def test_fim_fills_the_masked_body_with_an_indented_statement(
    lm: GPTBigCodeForCausalLM, tok: Tokenizer, layout: str
) -> None:
    middle = fill_middle(lm, tok, layout)
    assert "<|endoftext|>" not in middle and "<fim_" not in middle
    lines = [line for line in middle.split("\n") if line.strip()]
    assert lines, f"empty middle: {middle!r}"
    # Inside the function body, and Python: a statement there, or the valid start of one
    # (a docstring or a call may run past the token budget).
    assert lines[0].startswith("    "), repr(middle)
    assert starts_a_statement(lines[0]), repr(middle)


@pytest.mark.parametrize("layout", [pytest.param("psm", marks=TOO_WEAK_YET), "spm"])
def test_fim_fills_the_masked_function_body(lm: GPTBigCodeForCausalLM, tok: Tokenizer,
                                            layout: str) -> None:
    middle = fill_middle(lm, tok, layout)
    # The body starts on the next line, one level in, and that one line makes a valid file.
    assert middle.startswith("\n"), repr(middle)
    line = middle[1:].split("\n", 1)[0]
    assert line.startswith("    ") and not line[4].isspace(), repr(middle)
    compile(FIM_PREFIX_TEXT + "\n" + line + FIM_SUFFIX_TEXT, "<filled>", "exec")


@pytest.mark.slow
def test_transformers_loads_the_folder_with_the_same_logits(lm: GPTBigCodeForCausalLM) -> None:
    transformers: Any = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    text = "import os\n\n\ndef main():\n    print(os.getcwd())\n"
    ids = hf_tok(text)["input_ids"]
    assert ids == Tokenizer.from_pretrained(DEFAULT_MODEL_DIR).encode(text)
    assert hf_tok.model_max_length == lm.config.n_positions
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(lm(x).logits, hf(x).logits.to(torch.float32), rtol=1e-4,
                                   atol=1e-4)


def bits_per_byte(lm: GPTBigCodeForCausalLM, tok: Tokenizer, text: str,
                  context: str = "") -> float:
    """Bits per byte of text after <|endoftext|> and the (unscored) context, in windows of the
    model's positions sliding by half of them."""
    from model.train.evaluate import Scorer, file_nll_bits
    scorer = Scorer(lm, tok.backend, [], autocast=False)
    header = tok.encode(context) if context else []
    return file_nll_bits(scorer, text, lm.config.n_positions // 2, header) / len(text.encode())


MODERN_PYTHON = Path(__file__).parent / "data" / "modern_python.py"


def test_modern_third_party_python_compresses_far_better_than_xz(
    lm: GPTBigCodeForCausalLM, tok: Tokenizer
) -> None:
    # Written for this test (type hints, dataclasses, f-strings, enums, asyncio), so no model
    # saw it. The model trained on the standard library alone scored 1.50 bits per byte here,
    # the one trained on released packages 0.85; xz -9e needs 3.4 on this short a text.
    text = MODERN_PYTHON.read_text(encoding="utf-8")
    assert bits_per_byte(lm, tok, text) < 1.1


def test_a_definition_in_another_file_of_the_repository_is_used(
    lm: GPTBigCodeForCausalLM, tok: Tokenizer
) -> None:
    # StarCoder's repository format, as the server's cross-file context writes it: a name
    # defined in one file is far likelier in the next when that file comes first. Measured:
    # 0.68 of the bits alone for this model, 0.98 for the stdlib model that never saw the
    # format (fp32, CPU; deterministic for given weights).
    util = ("def normalise_endpoint_url(raw: str, default_port: int = 443) -> str:\n"
            "    host, _, port = raw.partition(':')\n"
            "    return f'{host}:{port or default_port}'\n")
    main = ("from .util import normalise_endpoint_url\n\n\n"
            "def connect(raw):\n"
            "    url = normalise_endpoint_url(raw, default_port=8080)\n"
            "    return url\n")
    alone = bits_per_byte(lm, tok, "<filename>shop/client.py\n" + main)
    context = "<reponame>shop<filename>shop/util.py\n" + util
    with_util = bits_per_byte(lm, tok, "<filename>shop/client.py\n" + main, context=context)
    assert with_util < 0.7 * alone, (with_util, alone)
