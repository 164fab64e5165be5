"""The diagnostics heads: BIO targets and span decoding, the two-headed checkpoint (its round
trip and transformers' view of it), windowed tagging, and incremental per-document scanning."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from cache.prefix import longest_common_prefix
from cache.scanner import DocumentScanner
from model import GPTBigCodeConfig, GPTBigCodeForCausalLM, Tokenizer, checkpoint
from model.heads import (
    DEFAULT_TAG_WINDOW,
    DiagnosticsModel,
    HeadsError,
    find_entities,
    tag_probabilities,
    windows,
)
from model.tagging import ENTITY_TYPES, Entity, bio_labels, decode_entities, token_tags

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = bio_labels()
VOCAB = 300
# 64 positions (so 64-token tagging windows, a new one every 32 tokens): a few hundred tokens
# make several.
POSITIONS = 64


def tiny_backbone(folder: Path, **overrides: Any) -> Path:
    """A random causal-LM checkpoint, weights wide enough that tag probabilities vary."""
    settings: dict[str, Any] = dict(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=32, n_layer=2, n_head=4,
        multi_query=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=0.3, classifier_dropout=0.0,
    )
    torch.manual_seed(1)
    GPTBigCodeForCausalLM(GPTBigCodeConfig(**{**settings, **overrides})).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> DiagnosticsModel:
    folder = tiny_backbone(tmp_path_factory.mktemp("backbone"))
    return DiagnosticsModel.fresh(folder).eval()


@pytest.fixture
def own_heads(tmp_path: Path) -> DiagnosticsModel:
    """A model of the test's own, for tests whose calls change it."""
    return DiagnosticsModel.fresh(tiny_backbone(tmp_path / "backbone")).eval()


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


# -- BIO targets -------------------------------------------------------------------------------


def pieces(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The text the tokens spell and each token's character span."""
    offsets, at = [], 0
    for token in tokens:
        offsets.append((at, at + len(token)))
        at += len(token)
    return "".join(tokens), offsets


def test_token_tags_mark_first_token_b_and_rest_i() -> None:
    text, offsets = pieces(['key', '="', 'abcd', '1234', '";', ' user', '@', 'x.com', '\n'])
    key = text.index("abcd")
    email = text.index("user")  # inside the token " user"
    spans = [(key, key + 8, "KEY"), (email, email + len("user@x.com"), "EMAIL")]
    names = ["O", "O", "B-KEY", "I-KEY", "O", "B-EMAIL", "I-EMAIL", "I-EMAIL", "O"]
    assert token_tags(offsets, spans, LABELS) == [LABELS.index(n) for n in names]


def test_token_tags_reject_unknown_span_type() -> None:
    text, offsets = pieces(["call", " 555", "-1234"])
    with pytest.raises(ValueError, match="'PHONE'"):
        token_tags(offsets, [(4, 13, "PHONE")], LABELS)


# -- decoding probabilities into spans ---------------------------------------------------------


Tag = str | tuple[str, float]


def tagged(tags: Sequence[Tag]) -> torch.Tensor:
    """(T, labels) probabilities: each token's tag gets p (default 0.9), "O" the rest."""
    rows = torch.zeros(len(tags), len(LABELS))
    for t, tag in enumerate(tags):
        name, p = (tag, 0.9) if isinstance(tag, str) else tag
        rows[t, LABELS.index(name)] += p
        rows[t, 0] += 1 - p
    return rows


def decode(tokens: Sequence[str], tags: Sequence[Tag],
           thresholds: dict[str, float] | float = 0.5) -> list[tuple[str, str]]:
    text, offsets = pieces(tokens)
    found = decode_entities(text, offsets, tagged(tags), LABELS, thresholds)
    return [(text[e.start : e.end], e.label) for e in found]


def test_run_of_tagged_tokens_is_one_span_scored_by_its_mean() -> None:
    tokens = ["x", " = ", "ab1d", "eF2h", "iJ3l", ";"]
    tags: list[Tag] = ["O", "O", ("B-KEY", 0.6), ("I-KEY", 0.8), ("I-KEY", 1.0), "O"]
    text, offsets = pieces(tokens)
    found = decode_entities(text, offsets, tagged(tags), LABELS)
    start = text.index("ab1d")
    assert found == [Entity(start, start + 12, "KEY", found[0].score)]
    assert found[0].score == pytest.approx(0.8)


def test_b_and_i_of_one_type_together_outvote_o() -> None:
    # "O" is the single most likely label, but the KEY type holds 0.6 of the mass.
    probs = tagged(["O", "B-KEY", "I-KEY", "O"])
    probs[1:3] = 0.0
    probs[1:3, LABELS.index("O")] = 0.4
    probs[1:3, LABELS.index("B-KEY")] = 0.3
    probs[1:3, LABELS.index("I-KEY")] = 0.3
    text, offsets = pieces(["k=", "ab1d", "eF2h", ";"])
    assert [(e.start, e.end) for e in decode_entities(text, offsets, probs, LABELS)] == [(2, 10)]


def test_quotes_and_separators_at_run_edges_are_trimmed() -> None:
    tokens = ["key", '="', "abcd1234", "efgh", '";']
    assert decode(tokens, ["O", "I-KEY", "I-KEY", "I-KEY", "I-KEY"]) == [("abcd1234efgh", "KEY")]


def test_start_extends_back_over_value_characters_the_model_missed() -> None:
    tokens = ["api_key", " =", ' "', "abcd", "1234", "efgh", '"']
    tags = ["O", "O", "O", "O", "B-KEY", "I-KEY", "I-KEY"]
    assert decode(tokens, tags) == [("abcd1234efgh", "KEY")]


def test_email_extends_back_across_at_sign_and_key_does_not() -> None:
    tokens = ["mail", ":", ' "', "jane", ".doe", "@", "example", ".com", '"']
    tags = ["O"] * 6 + ["B-EMAIL", "I-EMAIL", "O"]
    # The value's score is the mean over all its tokens: 2 of 5 tagged (0.9) here.
    assert decode(tokens, tags, 0.35) == [("jane.doe@example.com", "EMAIL")]
    assert decode(tokens, tags, 0.37) == []
    key_tokens = [*tokens[:6], "x9Kq2", "Zr7pL", '"']
    key_tags = ["O"] * 6 + ["B-KEY", "I-KEY", "O"]
    assert decode(key_tokens, key_tags, 0.5) == [("x9Kq2Zr7pL", "KEY")]


def test_password_in_url_stops_at_colon_and_at_sign() -> None:
    tokens = ["postgres", "://", "user", ":", "pw", "123", "@", "host"]
    tags = ["O", "O", "B-USERNAME", "O", "B-PASSWORD", "I-PASSWORD", "O", "O"]
    assert decode(tokens, tags) == [("user", "USERNAME"), ("pw123", "PASSWORD")]
    tags[4] = "O"  # the tagger missed "pw": the value still reaches back to the colon
    assert decode(tokens, tags, 0.44) == [("user", "USERNAME"), ("pw123", "PASSWORD")]


@pytest.mark.parametrize(
    ("thresholds", "kept"),
    [(0.69, True), (0.71, False), ({"KEY": 0.71}, False), ({"KEY": 0.69}, True),
     ({"EMAIL": 0.99}, True), ({"KEY": 0.5, "EMAIL": 0.0}, True)],
)
def test_threshold_per_type_keeps_or_drops_span(
    thresholds: dict[str, float] | float, kept: bool
) -> None:
    tokens = ["k", "=", "abcd1234", "efgh5678", "\n"]
    tags: list[Tag] = ["O", "O", ("B-KEY", 0.6), ("I-KEY", 0.8), "O"]  # mean 0.7
    assert decode(tokens, tags, thresholds) == ([("abcd1234efgh5678", "KEY")] if kept else [])


def test_integer_threshold_applies_to_all_types() -> None:
    tokens = ["k", "=", "abcd1234", "efgh5678", "\n"]
    tags = ["O", "O", "B-KEY", "I-KEY", "O"]
    text, offsets = pieces(tokens)
    assert decode_entities(text, offsets, tagged(tags), LABELS, 1) == []
    assert len(decode_entities(text, offsets, tagged(tags), LABELS, 0)) == 1


def test_entities_come_sorted_and_disjoint() -> None:
    # USERNAME stops at "@" and EMAIL extends back across it: the later run would start first.
    # (A password follows: a user name is only reported beside a credential.)
    tokens = [' "', "jane", ".doe", "@", "exa", "mple", ".com", '"', " pw=", "Xy7kq2!"]
    text, offsets = pieces(tokens)
    tags = ["O", "O", "O", "O", "B-USERNAME", "B-EMAIL", "I-EMAIL", "O", "O", "B-PASSWORD"]
    found = decode_entities(text, offsets, tagged(tags), LABELS, 0.2)
    assert len(found) >= 2, "the user name or email, and the password"
    assert [e.start for e in found] == sorted(e.start for e in found)
    for before, after in zip(found, found[1:], strict=False):
        assert before.end <= after.start, (before, after)


@pytest.mark.parametrize(("value", "kept"), [("a1", False), ("a1b2c3d", False), ("a1b2c3d4", True)])
def test_key_shorter_than_minimum_is_dropped(value: str, kept: bool) -> None:
    tokens = ["k", ' = "', value, '"']
    assert decode(tokens, ["O", "O", "B-KEY", "O"]) == ([(value, "KEY")] if kept else [])


def test_email_without_at_sign_is_dropped() -> None:
    tokens = ["contact", ': "', "example", ".com", '"']
    assert decode(tokens, ["O", "O", "B-EMAIL", "I-EMAIL", "O"]) == []


def test_probabilities_of_wrong_shape_are_rejected() -> None:
    text, offsets = pieces(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(2, 11\).*3 tokens x 11 labels"):
        decode_entities(text, offsets, torch.zeros(2, len(LABELS)), LABELS)
    with pytest.raises(ValueError, match="3 tokens x 11 labels"):
        decode_entities(text, offsets, torch.zeros(3, 5), LABELS)


# -- windows -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_tokens", "size"),
    [(0, 8), (5, 8), (6, 8), (7, 8), (8, 8), (9, 8), (100, 8), (37, 10), (1000, 160),
     (5000, 512), (511, 512), (8192, 8192)],
)
def test_windows_own_every_token_once_away_from_the_window_edges(n_tokens: int, size: int
                                                                  ) -> None:
    plan = windows(n_tokens, size)
    quarter = size // 4
    assert plan[0].start == plan[0].owned_from == 0
    assert plan[-1].end == plan[-1].owned_to == n_tokens
    for before, after in zip(plan, plan[1:], strict=False):
        assert after.owned_from == before.owned_to  # owned parts tile [0, n_tokens)
        assert after.start - before.start == size - 2 * quarter  # a new window every half
        assert before.end - before.start == size or before.end == n_tokens
    for w in plan:
        assert 0 <= w.start <= w.owned_from <= w.owned_to <= w.end and w.end - w.start <= size
        assert w.owned_to > w.owned_from or n_tokens == 0
        # at least a quarter window of left context (but at the document's start), and never
        # in the last quarter of a window
        assert w.owned_from - w.start >= quarter or w.start == 0
        assert w.owned_to - w.start <= size - quarter


def test_windows_of_empty_short_and_just_longer_documents() -> None:
    def plan(n: int) -> list[tuple[int, int, int, int]]:
        return [(w.start, w.end, w.owned_from, w.owned_to) for w in windows(n, 8)]
    assert plan(0) == [(0, 0, 0, 0)]
    assert plan(6) == [(0, 6, 0, 6)]
    assert plan(7) == [(0, 7, 0, 6), (4, 7, 6, 7)]
    assert plan(13) == [(0, 8, 0, 6), (4, 12, 6, 10), (8, 13, 10, 13)]


@pytest.mark.parametrize("size", [7, 0])
def test_windows_below_the_minimum_size_are_rejected(size: int) -> None:
    with pytest.raises(ValueError, match=f"window size {size} is below the minimum 8"):
        windows(20, size)


def test_tag_window_is_the_recorded_training_length_within_positions(
    own_heads: DiagnosticsModel, tmp_path: Path
) -> None:
    assert own_heads.settings.tag_window is None
    assert own_heads.tag_window == POSITIONS  # the default 512 capped by n_positions
    own_heads.settings.tag_window = 32
    assert own_heads.tag_window == 32
    own_heads.save_pretrained(tmp_path / "heads")
    assert json.loads((tmp_path / "heads" / "config.json").read_text()
                      )["diagnostics"]["tag_window"] == 32
    assert DiagnosticsModel.from_pretrained(tmp_path / "heads").tag_window == 32


def test_a_missing_tag_window_reads_as_the_packaged_training_length(tmp_path: Path) -> None:
    wide = tiny_backbone(tmp_path / "backbone", n_positions=1024)  # wider than the training
    DiagnosticsModel.fresh(wide).save_pretrained(tmp_path / "heads")
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    del config["diagnostics"]["tag_window"]
    (tmp_path / "heads" / "config.json").write_text(json.dumps(config))
    assert DiagnosticsModel.from_pretrained(tmp_path / "heads").tag_window == DEFAULT_TAG_WINDOW
    config["diagnostics"]["tag_window"] = 4
    (tmp_path / "heads" / "config.json").write_text(json.dumps(config))
    with pytest.raises(HeadsError, match="tag_window must be a token count of at least 8"):
        DiagnosticsModel.from_pretrained(tmp_path / "heads")


# -- tag probabilities -------------------------------------------------------------------------


def test_tag_probabilities_of_short_document_equal_token_classifier(
    heads: DiagnosticsModel,
) -> None:
    ids = random_ids(random.Random(0), POSITIONS * 3 // 4)  # one window owns them all
    with torch.no_grad():
        expected = heads.tagger(torch.tensor([ids])).logits[0].softmax(-1)
    got = tag_probabilities(heads, ids)
    torch.testing.assert_close(got, expected)
    assert got.shape == (len(ids), len(LABELS))
    assert got.std() > 0.05  # the rows differ: a comparison above that could fail


def test_tag_probabilities_of_long_document_take_each_token_from_its_window(
    heads: DiagnosticsModel,
) -> None:
    ids = random_ids(random.Random(1), 2 * POSITIONS + 17)
    got = tag_probabilities(heads, ids)
    assert got.shape == (len(ids), len(LABELS))
    torch.testing.assert_close(got.sum(-1), torch.ones(len(ids)))
    plan = windows(len(ids), POSITIONS)
    assert len(plan) > 2
    with torch.no_grad():
        for w in plan:
            run = heads.tagger(torch.tensor([ids[w.start : w.end]])).logits[0].softmax(-1)
            torch.testing.assert_close(got[w.owned_from : w.owned_to],
                                       run[w.owned_from - w.start : w.owned_to - w.start])
    # Without the window's left context the later tokens would be tagged differently.
    with torch.no_grad():
        alone = heads.tagger(torch.tensor([ids[POSITIONS : POSITIONS + 10]])).logits[0]
    alone = alone.softmax(-1)
    assert not torch.allclose(alone, got[POSITIONS : POSITIONS + 10], atol=1e-3)


def test_empty_document_has_no_tag_probabilities(heads: DiagnosticsModel) -> None:
    assert tag_probabilities(heads, []).shape == (0, len(LABELS))


# -- the checkpoint folder ---------------------------------------------------------------------


def outputs(model: DiagnosticsModel, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        hidden = model.hidden(torch.tensor([ids]))
        return model.tag_logits(hidden), model.bug_logits(hidden)


def test_save_and_load_keep_outputs_and_settings(own_heads: DiagnosticsModel,
                                                 tmp_path: Path) -> None:
    own_heads.settings.thresholds = {"KEY": 0.7, "BUG": 0.4}
    own_heads.settings.training = {"steps": 12, "data": "secrets-v1"}
    own_heads.save_pretrained(tmp_path / "heads")
    loaded = DiagnosticsModel.from_pretrained(tmp_path / "heads")

    ids = random_ids(random.Random(2), 40)
    for mine, theirs in zip(outputs(own_heads, ids), outputs(loaded, ids), strict=True):
        torch.testing.assert_close(theirs, mine, rtol=0, atol=0)
    assert loaded.settings.thresholds == {"KEY": 0.7, "BUG": 0.4}
    assert loaded.settings.training == {"steps": 12, "data": "secrets-v1"}
    assert loaded.settings.bug_labels == ("looks_right", "looks_wrong")
    assert loaded.labels == LABELS
    assert loaded.bug_probability(ids) == pytest.approx(own_heads.bug_probability(ids))


def test_bug_head_is_stored_in_the_one_safetensors_file(own_heads: DiagnosticsModel,
                                                        tmp_path: Path) -> None:
    own_heads.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert files == ["model.safetensors"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as stored:
        names = set(stored.keys())
        torch.testing.assert_close(stored.get_tensor("score.weight"), own_heads.score.weight)
    heads_and_backbone = {"score.weight", "classifier.weight", "transformer.wte.weight"}
    assert heads_and_backbone <= names


def test_saving_in_bf16_stores_rounded_weights(own_heads: DiagnosticsModel,
                                               tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in own_heads.state_dict().items()}
    before_score = own_heads.score.weight.detach().clone()
    own_heads.save_pretrained(tmp_path, dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as stored:
        assert stored.get_tensor("score.weight").dtype == torch.bfloat16

    loaded = DiagnosticsModel.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float32
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, before[key].bfloat16().float(), rtol=0, atol=0)
    assert not torch.equal(loaded.score.weight, before_score)  # rounding did happen

    as_bf16 = DiagnosticsModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert as_bf16.dtype == as_bf16.score.weight.dtype == torch.bfloat16


def test_saving_in_bf16_leaves_the_model_weights_unchanged(own_heads: DiagnosticsModel,
                                                           tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in own_heads.state_dict().items()}
    own_heads.save_pretrained(tmp_path, dtype=torch.bfloat16)
    assert own_heads.dtype == torch.float32
    changed = [k for k, v in own_heads.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == []


def edit_config(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HeadsError, match="config.json missing") as error:
        DiagnosticsModel.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_plain_checkpoint_without_diagnostics_entry_is_refused(tmp_path: Path) -> None:
    folder = tiny_backbone(tmp_path / "backbone")
    with pytest.raises(HeadsError, match='no "diagnostics" entry') as error:
        DiagnosticsModel.from_pretrained(folder)
    assert str(folder) in str(error.value)


def test_score_of_wrong_shape_is_refused(own_heads: DiagnosticsModel, tmp_path: Path) -> None:
    own_heads.save_pretrained(tmp_path)
    edit_config(tmp_path, lambda raw: raw["diagnostics"].update(bug_labels=["a", "b", "c"]))
    with pytest.raises(HeadsError, match=r"shape \(2, 32\), expected \(3, 32\)") as error:
        DiagnosticsModel.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_weights_without_score_are_refused(own_heads: DiagnosticsModel, tmp_path: Path) -> None:
    own_heads.save_pretrained(tmp_path)
    state = checkpoint.read_state_dict(tmp_path)
    del state["score.weight"]
    checkpoint.write_state_dict(state, tmp_path)
    with pytest.raises(HeadsError, match="no score.weight") as error:
        DiagnosticsModel.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)


# -- transformers reads the folder as either head ------------------------------------------------


def test_transformers_loads_folder_as_token_and_sequence_classifier(
    heads: DiagnosticsModel, tmp_path: Path, transformers_module: Any
) -> None:
    heads.save_pretrained(tmp_path)
    ids = torch.tensor([random_ids(random.Random(3), 45)])
    tag, bug = outputs(heads, ids[0].tolist())

    tagger = transformers_module.GPTBigCodeForTokenClassification.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    assert tagger.config.id2label == dict(enumerate(LABELS))
    with torch.no_grad():
        torch.testing.assert_close(tagger(ids).logits, tag)

    scorer = transformers_module.GPTBigCodeForSequenceClassification.from_pretrained(
        tmp_path, num_labels=2, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(scorer(ids).logits, bug[:, -1])


# -- incremental scanning ----------------------------------------------------------------------


def check_scan(scanner: DocumentScanner, uri: str, ids: list[int]) -> int:
    """Scan `ids`, compare with a full pass; return how many tokens were computed."""
    scan = scanner.scan(uri, ids)
    # (tag_probabilities fails on an empty document; see the test of that.)
    expected = tag_probabilities(scanner.model, ids) if ids else torch.zeros(0, len(LABELS))
    assert scan.probs.shape == expected.shape
    torch.testing.assert_close(scan.probs, expected, atol=1e-5, rtol=1e-5)
    again = scanner.scan(uri, ids)  # unchanged: nothing to run
    assert (again.computed, again.reused) == (0, len(ids))
    torch.testing.assert_close(again.probs, scan.probs, rtol=0, atol=0)
    return scan.computed


def random_edit(rng: random.Random, ids: list[int]) -> list[int]:
    at, n = rng.randrange(len(ids) + 1), rng.randint(1, 40)
    kind = rng.choice(("insert", "delete", "replace"))
    new = [] if kind == "delete" else random_ids(rng, n)
    return ids[:at] + new + ids[at + (0 if kind == "insert" else n) :]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scanner_matches_full_pass_through_an_edit_session(heads: DiagnosticsModel,
                                                           seed: int) -> None:
    rng = random.Random(seed)
    edits: list[Callable[[list[int]], list[int]]] = [
        lambda ids: random_ids(rng, 50),  # opened: one window
        lambda ids: ids[:5] + random_ids(rng, 3) + ids[5:],  # typing near the top
        lambda ids: ids + random_ids(rng, 30),  # grows across the window boundary
        lambda ids: ids[:-12] + random_ids(rng, 4) + ids[-8:],  # edit in the last window
        lambda ids: ids[:3] + random_ids(rng, 1) + ids[4:],  # same-length edit in window 0
        *[lambda ids: random_edit(rng, ids)] * 8,
        lambda ids: ids + random_ids(rng, 200),  # several windows
        lambda ids: ids[:-15] + random_ids(rng, 15),  # the tail rewritten
        *[lambda ids: random_edit(rng, ids)] * 4,
        lambda ids: ids[:60],  # shrinks back to one window
        lambda ids: [],  # emptied
        lambda ids: random_ids(rng, 20),
    ]
    scanner = DocumentScanner(heads)
    ids: list[int] = []
    sizes = set()
    for edit in edits:
        previous, ids = ids, edit(ids)
        computed = check_scan(scanner, "file:///a.py", ids)
        sizes.add(len(windows(len(ids), POSITIONS)))
        if len(windows(len(ids), POSITIONS)) == 1:
            assert computed == len(ids) - longest_common_prefix(previous, ids)
    assert {1, 2} < sizes and max(sizes) >= 4


def test_scanner_recomputes_only_windows_holding_the_change(heads: DiagnosticsModel) -> None:
    rng = random.Random(4)
    ids = random_ids(rng, 290)
    scanner = DocumentScanner(heads)
    scanner.scan("doc", ids)
    at = 200
    ids[at] = (ids[at] + 1) % VOCAB  # same length: no window's tokens move
    holding = [w for w in windows(len(ids), POSITIONS) if w.start <= at < w.end]
    assert 1 < len(holding) < len(windows(len(ids), POSITIONS))
    assert check_scan(scanner, "doc", ids) == sum(w.end - at for w in holding)

    appended = ids + random_ids(rng, 10)  # fits in the last window: only the new tokens run
    assert len(windows(len(appended), POSITIONS)) == len(windows(len(ids), POSITIONS))
    assert check_scan(scanner, "doc", appended) == 10


def test_scanner_grows_buffers_past_their_headroom(tmp_path: Path) -> None:
    wide = DiagnosticsModel.fresh(tiny_backbone(tmp_path, n_positions=512)).eval()
    rng = random.Random(5)
    scanner = DocumentScanner(wide)
    ids = random_ids(rng, 10)
    assert check_scan(scanner, "doc", ids) == 10
    capacity = scanner.entries["doc"][0].kv.capacity
    ids += random_ids(rng, 360)  # still one window (up to 3/4 of 512)
    assert len(ids) > capacity and len(windows(len(ids), wide.tag_window)) == 1
    assert check_scan(scanner, "doc", ids) == 360


def test_scanner_evicts_least_recently_used_document(heads: DiagnosticsModel) -> None:
    rng = random.Random(6)
    docs = {uri: random_ids(rng, 30) for uri in ("a", "b", "c")}
    scanner = DocumentScanner(heads, max_documents=2)
    for uri in ("a", "b", "a", "c"):  # "a" was used after "b"
        scanner.scan(uri, docs[uri])
    assert list(scanner.entries) == ["a", "c"]
    assert scanner.scan("a", docs["a"]).computed == 0
    assert scanner.scan("b", docs["b"]).computed == 30
    assert list(scanner.entries) == ["a", "b"]


def test_dropped_document_is_forgotten_and_frees_its_bytes(heads: DiagnosticsModel) -> None:
    rng = random.Random(7)
    scanner = DocumentScanner(heads)
    assert scanner.nbytes == 0
    scanner.scan("a", random_ids(rng, 40))
    one = scanner.nbytes
    b = random_ids(rng, 200)
    scanner.scan("b", b)
    both = scanner.nbytes
    assert one > 0 and both > one
    scanner.drop("a")
    assert scanner.nbytes == both - one
    assert "a" not in scanner.entries
    scanner.drop("b")
    assert scanner.nbytes == 0
    assert scanner.scan("b", b).computed == sum(w.end - w.start for w in windows(200, POSITIONS))
    scanner.drop("never opened")


def test_scanner_requires_room_for_one_document(heads: DiagnosticsModel) -> None:
    with pytest.raises(ValueError, match="max_documents must be at least 1, got 0"):
        DocumentScanner(heads, max_documents=0)


# -- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged_tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained(checkpoint.DEFAULT_MODEL_DIR)


def test_find_entities_returns_ordered_trimmed_spans_within_text(
    tmp_path: Path, packaged_tokenizer: Tokenizer
) -> None:
    model = DiagnosticsModel.fresh(tiny_backbone(tmp_path, vocab_size=4096)).eval()
    text = (
        'API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"\n'
        "db = connect('postgres://admin:hunter22@10.0.0.12/app')\n"
        "# maintainer: jane.doe@example.com\n"
    ) * 4
    everything = {kind: 0.0 for kind in ENTITY_TYPES}
    found = find_entities(model, packaged_tokenizer, text, everything)
    assert found, "with zero thresholds a random tagger flags something"
    assert [e.start for e in found] == sorted(e.start for e in found)
    for entity in found:
        assert 0 <= entity.start < entity.end <= len(text)
        assert entity.label in ENTITY_TYPES and 0.0 <= entity.score <= 1.0
        value = text[entity.start : entity.end]
        assert value == value.strip(" \t\n\"'")
    assert len(find_entities(model, packaged_tokenizer, text)) <= len(found)


@pytest.mark.parametrize(("value", "kept"), [
    ("52.14.203.77", True), ("52.14.203.77:8080", True), ("2a00:1450:4001::200e", True),
    ("10.0.0.5", False), ("192.168.1.20", False), ("127.0.0.1", False), ("203.0.113.7", False),
    ("5432", False), ("1.2.3", False),
])
def test_only_globally_routable_addresses_are_kept(value: str, kept: bool) -> None:
    tokens = ['HOST = "', value, '"']
    found = decode(tokens, ["O", "B-IP_ADDRESS", "O"])
    assert found == ([(value, "IP_ADDRESS")] if kept else [])


def test_a_cancelled_scan_keeps_its_finished_windows_for_the_next(heads: DiagnosticsModel
                                                                   ) -> None:
    rng = random.Random(11)
    ids = random_ids(rng, 300)
    plan = windows(300, POSITIONS)
    assert len(plan) >= 3
    polls: list[int] = []

    def after_two() -> bool:
        polls.append(1)
        return len(polls) >= 2  # polled before the second and third windows

    scanner = DocumentScanner(heads)
    assert scanner.scan("doc", ids, after_two) is None
    assert len(scanner.entries["doc"]) == 2
    done = plan[0].end - plan[0].start + plan[1].end - plan[1].start
    again = scanner.scan("doc", ids)
    assert again is not None
    assert again.computed == sum(w.end - w.start for w in plan) - done
    torch.testing.assert_close(again.probs, tag_probabilities(heads, ids), rtol=1e-5, atol=1e-5)
