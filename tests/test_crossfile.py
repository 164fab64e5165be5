"""Context from other files in StarCoder's repository format: chosen by the current file's
imports and by names used near the cursor, within its token share, written exactly as
model/train/repo_format.py writes training sequences, kept while the user types (so the cache
stays valid), chosen again when another file changes, off by option or without the tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from engines import llamacpp
from lsp_client import FAST, start, stop
from lsp_fixtures import build_checkpoint
from lsprotocol import types

from cache import ContextBudget, PromptBuilder, layout_ids
from cache.crossfile import (
    OtherDocument,
    RepoContext,
    RepoContextChooser,
    imports,
    module_paths,
    repo_context_ids,
)
from lsp_server.engine import (
    CompletionRequest,
    Engine,
    EngineSettings,
    GenerationParams,
    ModelChoice,
    load_engine,
)
from lsp_server.engine.remote import RemoteBackend
from lsp_server.engine.requests import RemoteEngine
from lsp_server.options import parse_options
from model.checkpoint import resolve_checkpoint
from model.tokenizer import Tokenizer
from model.train.fim import FimSample
from model.train.repo_format import repository_ids

ROOT = "file:///work/shop"
CURRENT = f"{ROOT}/shop/orders.py"
HELPERS = f"{ROOT}/shop/pricing.py"
UNRELATED = f"{ROOT}/shop/colours.py"
NAMES = f"{ROOT}/shop/taxes.py"

PRICING = '''"""Prices of the items in an order."""

import decimal


def unit_price(sku: str, *, currency: str = "EUR") -> decimal.Decimal:
    """The price of one item of `sku`, in `currency`."""
    table = {"apple": decimal.Decimal("0.40"), "pear": decimal.Decimal("0.55")}
    return table[sku]


def rounded(value: decimal.Decimal) -> decimal.Decimal:
    return value.quantize(decimal.Decimal("0.01"))
'''
COLOURS = '''"""Colours."""

RED = "#ff0000"


def blend(first: str, second: str) -> str:
    return first
'''
TAXES = '''"""Taxes."""


def vat_rate(country: str) -> float:
    """The VAT rate of a country."""
    return {"FR": 0.2, "DE": 0.19}.get(country, 0.0)
'''
ORDERS = '''"""Orders."""

from .pricing import unit_price


def total(order: dict[str, int], country: str) -> float:
    amount = sum(unit_price(sku) * count for sku, count in order.items())
    rate = vat_rate(country)
    return '''


def others(*pairs: tuple[str, str]) -> tuple[OtherDocument, ...]:
    return tuple(OtherDocument(uri, text, "python") for uri, text in pairs)


WORKSPACE = others((HELPERS, PRICING), (UNRELATED, COLOURS), (NAMES, TAXES))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained("default")  # has <reponame> and <filename>


def choose(chooser: RepoContextChooser, text: str = ORDERS, cursor: int | None = None,
           docs: tuple[OtherDocument, ...] = WORKSPACE, max_tokens: int = 400
           ) -> RepoContext | None:
    at = len(text) if cursor is None else cursor
    return chooser.choose(CURRENT, text, at, docs, max_tokens, ROOT, "python")


# ---- reading a Python file


def test_imports_read_relative_and_absolute_modules_with_their_names() -> None:
    found = imports("import os.path, json as j\nfrom .pricing import (unit_price,\n  rounded)\n"
                    "from .. import util\nfrom x.y import z  # note\n")
    assert found["os.path"] == frozenset() and found["json"] == frozenset()
    assert found[".pricing"] == {"unit_price", "rounded"}
    assert found[".."] == {"util"} and "..util" in found and found["x.y"] == {"z"}
    assert module_paths(".pricing", "shop/orders.py") == ("shop/pricing.py",
                                                          "shop/pricing/__init__.py")
    assert module_paths("..util", "shop/sub/a.py")[0] == "shop/util.py"


# ---- choosing


def test_the_module_the_file_imports_is_chosen_with_the_definition_it_imports(
        tok: Tokenizer) -> None:
    context = choose(RepoContextChooser(tok), cursor=ORDERS.index("    amount"))
    assert context is not None
    assert context.reponame == "shop" and context.path == "shop/orders.py"
    assert "shop/pricing.py" in context.files and "shop/colours.py" not in context.files
    piece = next(p for p in context.pieces if p.path == "shop/pricing.py")
    assert piece.text.startswith("def unit_price(sku: str, *, currency: str = \"EUR\")")
    assert "def rounded" not in piece.text  # the definition ends where the next one starts
    assert context.files[-1] == "shop/pricing.py"  # imported: the most relevant, nearest


def test_a_file_defining_a_name_used_near_the_cursor_is_chosen(tok: Tokenizer) -> None:
    context = choose(RepoContextChooser(tok))
    assert context is not None and "shop/taxes.py" in context.files
    assert any(p.why == "name" and p.text.startswith("def vat_rate") for p in context.pieces)
    far = ORDERS + "\n" * 40 + "def later():\n    "  # vat_rate is now far from the cursor
    context = choose(RepoContextChooser(tok), far)
    assert context is not None and "shop/taxes.py" not in context.files


def test_the_context_stays_within_its_token_limit(tok: Tokenizer) -> None:
    long = "".join(f"def vat_rate_{i}(country: str) -> float:\n    return {i}.0\n\n"
                   for i in range(200)) + TAXES
    docs = others((HELPERS, PRICING * 5), (NAMES, long))
    for limit in (40, 80, 160):
        context = choose(RepoContextChooser(tok), docs=docs, max_tokens=limit)
        assert context is not None
        assert len(repo_context_ids(tok, context)) <= limit
    assert choose(RepoContextChooser(tok), docs=docs, max_tokens=10) is None  # not even names


def test_a_file_alone_still_gets_its_repository_header(tok: Tokenizer) -> None:
    """Nothing from other files: `<reponame>name<filename>path` alone, as in training, where
    it fits; nothing where it does not."""
    context = choose(RepoContextChooser(tok), docs=())
    assert context == RepoContext("shop", "shop/orders.py", ())
    ids = repo_context_ids(tok, context)
    assert tok.decode(ids) == "<reponame>shop<filename>shop/orders.py\n"
    assert choose(RepoContextChooser(tok), docs=(), max_tokens=len(ids) - 1) is None
    unrelated = others((UNRELATED, COLOURS))
    alone = choose(RepoContextChooser(tok), docs=unrelated)
    assert alone is not None and alone.pieces == () and alone.files == []


def test_the_prompt_takes_the_context_out_of_its_budget(tok: Tokenizer) -> None:
    context = choose(RepoContextChooser(tok), max_tokens=120)
    assert context is not None
    text = PRICING * 30 + ORDERS
    builder = PromptBuilder(tok, ContextBudget(tokens=600))
    prompt = builder.build(CURRENT, text, len(text), "spm", context)
    assert prompt.context_tokens == len(repo_context_ids(tok, context)) > 0
    assert len(prompt.ids) <= 600 + 3


# ---- the format


@pytest.mark.parametrize("layout", ["spm", "psm_line"])
def test_the_prompt_is_what_repo_format_writes_for_the_same_files(tok: Tokenizer,
                                                                  layout: str) -> None:
    context = choose(RepoContextChooser(tok))
    assert context is not None and len(context.pieces) >= 2
    cursor = ORDERS.index("rate = vat_rate") + len("rate = ")
    prompt = PromptBuilder(tok).build(CURRENT, ORDERS, cursor, layout, context)
    if layout == "spm":
        current = FimSample("spm", ORDERS[:cursor], "", ORDERS[cursor:])
    else:  # the cursor's line after <fim_middle>: the start of the middle
        cut = ORDERS.rfind("\n", 0, cursor) + 1
        current = FimSample("psm", ORDERS[:cut], ORDERS[cut:cursor], ORDERS[cursor:])
    samples = [(p.path, FimSample("plain", p.text)) for p in context.pieces]
    samples.append((context.path, current))

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [tok.encode_text(t) if t else [] for t in texts]

    written = repository_ids(context.reponame, samples, encode_batch)
    assert written[-1] == tok.eos_token_id
    assert prompt.ids == written[:-1]
    assert prompt.ids == layout_ids(layout, tok, ORDERS, cursor, prompt.start, prompt.end,
                                    prompt.cut, context)  # and what a fresh build gives


# ---- stability


def test_the_context_stays_while_the_user_types_and_moves(tok: Tokenizer) -> None:
    chooser = RepoContextChooser(tok)
    first = choose(chooser)
    text = ORDERS
    for key in "amount * (1 + rate)\n\ndef colour_of(order):\n    return blend(":
        text += key
        assert choose(chooser, text) is first  # `blend` near the cursor now: no new choice
    assert choose(chooser, text, cursor=10) is first
    assert chooser.choices == 1


def test_the_context_is_chosen_again_when_another_file_or_the_imports_change(
        tok: Tokenizer) -> None:
    chooser = RepoContextChooser(tok)
    first = choose(chooser)
    assert first is not None
    edited = others((HELPERS, PRICING.replace("0.40", "0.45")), (UNRELATED, COLOURS),
                    (NAMES, TAXES))
    second = choose(chooser, docs=edited)
    assert second is not None and second != first
    assert "0.45" in "".join(p.text for p in second.pieces)
    # A newly opened file with nothing relevant: chosen again, the same, kept as it was.
    unrelated = (*edited, *others((f"{ROOT}/shop/empty.py", "GREEN = 1\n")))
    assert choose(chooser, docs=unrelated) is second and chooser.choices == 3
    importing = ORDERS.replace("from .pricing", "from .colours import blend\nfrom .pricing")
    third = choose(chooser, importing, docs=unrelated)
    assert third is not None and "shop/colours.py" in third.files


def test_a_closed_documents_last_edit_stays_a_candidate_where_relevant(tok: Tokenizer) -> None:
    chooser = RepoContextChooser(tok)
    scratch = f"{ROOT}/shop/scratch.py"
    choose(chooser, docs=(*WORKSPACE, *others((scratch, "x = 1\n"))))
    edited = others((scratch, "x = 1\nDISCOUNT_CODES = ['SPRING']\n"))
    choose(chooser, docs=(*WORKSPACE, *edited))
    chooser.forget(scratch)
    context = choose(chooser, ORDERS + "\n# after the close\n")
    assert context is not None and "shop/scratch.py" not in context.files  # not relevant
    importing = "from .scratch import DISCOUNT_CODES\n" + ORDERS
    context = choose(chooser, importing)  # now it is
    assert context is not None and "shop/scratch.py" in context.files
    assert any("DISCOUNT_CODES" in p.text for p in context.pieces if p.why == "edit")


# ---- through the engine


@pytest.fixture(scope="module")
def default_engine() -> Engine:
    return load_engine(ModelChoice(name="default"), EngineSettings(context_tokens=512))


PARAMS = GenerationParams(max_new_tokens=4, time_budget_ms=60_000, min_confidence=0.0)


def test_typing_with_the_context_on_computes_only_the_typed_tokens(
        default_engine: Engine, single_thread: None) -> None:
    text = PRICING * 3 + ORDERS
    uri = CURRENT
    first = default_engine.complete(CompletionRequest(uri, text, len(text), "python", WORKSPACE,
                                                      ROOT), PARAMS)
    status = default_engine.status()["cross_file"]
    assert status["enabled"] and status["tokens"] > 20 and "shop/pricing.py" in status["files"]
    assert first.computed_tokens == first.prompt_tokens
    computed = []
    for key in "amount * (1 + rate)":
        text += key
        done = default_engine.complete(
            CompletionRequest(uri, text, len(text), "python", WORKSPACE, ROOT), PARAMS)
        computed.append(done.computed_tokens)
        assert done.reused_tokens >= status["tokens"]  # the context was not computed again
    assert max(computed) <= 8, computed  # the typed text (and what repair re-tokenised)


def test_an_edit_in_another_open_file_changes_the_prompt(default_engine: Engine,
                                                          single_thread: None) -> None:
    uri = f"{ROOT}/shop/checkout.py"
    request = CompletionRequest(uri, ORDERS, len(ORDERS), "python", WORKSPACE, ROOT)
    default_engine.complete(request, PARAMS)
    before = default_engine.builder.build(uri, ORDERS, len(ORDERS), "spm",
                                          default_engine.repo_context(request)).ids
    edited = others((HELPERS, PRICING.replace("unit_price(sku: str", "unit_price(item: str")),
                    (UNRELATED, COLOURS), (NAMES, TAXES))
    changed = CompletionRequest(uri, ORDERS, len(ORDERS), "python", edited, ROOT)
    done = default_engine.complete(changed, PARAMS)
    after = default_engine.builder.build(uri, ORDERS, len(ORDERS), "spm",
                                         default_engine.repo_context(changed)).ids
    assert before != after
    assert tok_text(default_engine, after).count("unit_price(item: str") == 1
    assert done.computed_tokens > 0 and done.computed_tokens < done.prompt_tokens


def tok_text(engine: Engine, ids: list[int]) -> str:
    return engine.tokenizer.decode(ids)


def test_the_option_turns_it_off(default_engine: Engine, single_thread: None) -> None:
    options, messages = parse_options({"crossFile": {"enabled": False}})
    assert messages == [] and EngineSettings.from_options(options).cross_file_share == 0.0
    assert parse_options({"crossFile": {"share": 0.9}})[1]  # out of range: a message
    off = load_engine(ModelChoice(name="default"),
                      EngineSettings(context_tokens=512, cross_file_share=0.0))
    request = CompletionRequest(CURRENT, ORDERS, len(ORDERS), "python", WORKSPACE, ROOT)
    alone = CompletionRequest(CURRENT, ORDERS, len(ORDERS), "python")
    with_docs, without = off.complete(request, PARAMS), off.complete(alone, PARAMS)
    assert with_docs.prompt_tokens == without.prompt_tokens
    assert off.status()["cross_file"]["enabled"] is False
    assert default_engine.complete(request, PARAMS).prompt_tokens > without.prompt_tokens


def test_a_tokenizer_without_the_repository_tokens_turns_it_off(
        tmp_path: Path, single_thread: None) -> None:
    folder = build_checkpoint(tmp_path / "tiny")  # FIM tokens only
    engine = load_engine(ModelChoice(name=str(folder)), EngineSettings(max_new_tokens=4))
    request = CompletionRequest(CURRENT, ORDERS, len(ORDERS), "python", WORKSPACE, ROOT)
    assert engine.repo_context(request) is None
    status = engine.status()["cross_file"]
    assert status["enabled"] is False and "<reponame>" in status["reason"]
    done = engine.complete(request, PARAMS)
    alone = engine.complete(CompletionRequest(CURRENT, ORDERS, len(ORDERS), "python"), PARAMS)
    assert done.prompt_tokens == alone.prompt_tokens
    with pytest.raises(ValueError, match="reponame"):
        repo_context_ids(engine.tokenizer, RepoContext("shop", "shop/orders.py", ()))


# ---- through the server


@pytest.mark.asyncio
async def test_the_server_shows_the_other_open_documents_and_reports_them(
        tmp_path: Path) -> None:
    client = await start("default", tmp_path, options={**FAST, "minConfidence": 0.0})
    try:
        status = await client.wait_until_loaded()
        assert status["state"] == "ready", status
        for uri, text in [(HELPERS, PRICING), (UNRELATED, COLOURS), (CURRENT, ORDERS)]:
            client.open(uri, text)
        end = types.Position(line=ORDERS.count("\n"), character=len(ORDERS.rsplit("\n", 1)[1]))
        await client.inline(CURRENT, end)
        report = (await client.status())["crossFile"]
        assert report["enabled"] and report["files"][-1] == "shop/pricing.py"
        assert report["tokens"] > 0
        client.type(CURRENT, end, "a")  # typing in the current file: no new choice
        await client.inline(CURRENT, types.Position(line=end.line, character=end.character + 1))
        again = (await client.status())["crossFile"]
        assert again["choices"] == report["choices"] and again["tokens"] == report["tokens"]
        client.configure({"crossFile": {"enabled": False}})
        await client.inline(CURRENT, end)
        report = (await client.status())["crossFile"]
        assert not report["enabled"] and report["files"] == [] and report["tokens"] == 0
    finally:
        await stop(client)


# ---- a remote engine gets the same prompt, as token ids


@pytest.mark.slow
def test_llama_server_gets_the_context_and_keeps_it_cached_while_typing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = llamacpp.server_binary()
    if not binary.is_file():
        pytest.skip(f"llama-server is not built ({binary}): `make engines`")
    monkeypatch.setenv("GPTBIGCODE_TEST_ENGINE_KEY", "sk-crossfile")
    spm = EngineSettings(fim_layout="spm")  # "auto" may choose by the backend's speed
    local = load_engine(ModelChoice(name="default"), spm)
    text = PRICING * 3 + ORDERS
    with llamacpp.LlamaServer(llamacpp.convert(resolve_checkpoint("default"), "f32"), ctx=1024,
                              api_key="sk-crossfile", log=tmp_path / "llama.log") as server:
        engine = load_engine(ModelChoice(engine=RemoteEngine(
            "llamacpp", server.url, api_key_env="GPTBIGCODE_TEST_ENGINE_KEY")), spm)
        backend = engine.backend
        assert isinstance(backend, RemoteBackend)
        shares = []
        for i, key in enumerate("amount * (1 + rate)"):
            text += key
            request = CompletionRequest(CURRENT, text, len(text), "python", WORKSPACE, ROOT)
            done = engine.complete(request, PARAMS)
            assert done.prompt_tokens == local.complete(request, PARAMS).prompt_tokens
            assert backend.stats.last_prompt_tokens >= done.prompt_tokens
            if i:
                shares.append(backend.stats.last_cached_tokens / backend.stats.last_prompt_tokens)
        assert engine.status()["cross_file"]["files"][-1] == "shop/pricing.py"
    assert min(shares) >= 0.9, shares
