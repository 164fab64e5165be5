"""The default model's training recipe: corpus split and dedup, tokenizer ids, FIM sequences."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from model.train.data import (
    SourceFile,
    collect_corpus,
    deduplicate,
    is_excluded,
    is_held_out,
    is_test_suite,
)
from model.train.fim import (
    EOT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    FimSample,
    build_sequences,
    chunk_text,
    encode_samples,
    pack,
    sample_ids,
    split_fim,
)
from model.train.tokenizer_recipe import SPECIAL_TOKENS, save_tokenizer, train_tokenizer

CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"


def char_ids(texts: list[str]) -> list[list[int]]:
    """A stand-in tokenizer: one token per character, above the special ids."""
    return [[100 + ord(c) for c in t] for t in texts]


def char_text(ids: list[int]) -> str:
    return "".join(chr(i - 100) for i in ids)


# -- data ---------------------------------------------------------------------------------


def test_held_out_split_depends_only_on_path_and_is_about_the_fraction() -> None:
    paths = [f"pkg{i}/mod{i}.py" for i in range(4000)]
    chosen = [p for p in paths if is_held_out(p, 0.05)]
    assert chosen == [p for p in reversed(paths) if is_held_out(p, 0.05)][::-1]
    assert 0.035 < len(chosen) / len(paths) < 0.065


def test_test_suites_are_told_apart_and_site_packages_are_excluded() -> None:
    assert is_test_suite(Path("test/test_os.py")) and not is_excluded(Path("test/test_os.py"))
    assert is_test_suite(Path("idlelib/idle_test/test_run.py"))
    assert not is_test_suite(Path("idlelib/run.py"))
    assert is_excluded(Path("site-packages/pip/__init__.py"))
    assert is_excluded(Path("_sysconfigdata__linux_x86_64-linux-gnu.py"))
    assert not is_excluded(Path("idlelib/run.py"))
    assert not is_excluded(Path("json/decoder.py"))


def test_deduplicate_drops_exact_and_near_copies_but_keeps_distinct_files() -> None:
    body = "\n".join(f"value_{i} = {i}" for i in range(40)) + "\n"
    near = body.replace("value_3 = 3", "value_3 = 33")
    files = [
        SourceFile("a.py", body),
        SourceFile("b.py", body),
        SourceFile("c.py", near),
        SourceFile("d.py", CODE),
        SourceFile("e.py", "   \n"),
    ]
    assert [f.path for f in deduplicate(files)] == ["a.py", "d.py"]


def test_corpus_normalises_line_ends_and_skips_undecodable_and_generated_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "ok.py").write_bytes(b"a = 1\r\nb = 2\r\n")
    (tmp_path / "latin1.py").write_bytes(b"s = '\xe9'\n")
    (tmp_path / "cp999.py").write_text('""" generated from X with gencodec.py. """\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_ok.py").write_text("assert True\n")
    corpus = collect_corpus(tmp_path)
    files = corpus.train + corpus.held_out
    assert [(f.path, f.text) for f in files] == [("ok.py", "a = 1\nb = 2\n")]


def test_missing_library_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_corpus(tmp_path / "nowhere")


# -- tokenizer ----------------------------------------------------------------------------


def test_tokenizer_has_starcoder_special_ids_and_round_trips(tmp_path: Path) -> None:
    tok = train_tokenizer([CODE * 20, "print('héllo wörld') 12345\n" * 10], vocab_size=300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(19))
    text = "x = 'naïve ☃'\r\n\tif x:  return 42  # <fim_middle>\n"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert FIM_MIDDLE in ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    save_tokenizer(tok, tmp_path, model_max_length=128)
    assert '"model_max_length": 128' in (tmp_path / "tokenizer_config.json").read_text()
    assert (tmp_path / "tokenizer.json").is_file()


# -- FIM ----------------------------------------------------------------------------------


def test_fim_rate_half_with_psm_and_spm_a_quarter_each() -> None:
    rng = random.Random(0)
    counts = Counter(split_fim(CODE, rng).layout for _ in range(4000))
    assert 0.46 < counts["plain"] / 4000 < 0.54
    assert 0.22 < counts["psm"] / 4000 < 0.28
    assert 0.22 < counts["spm"] / 4000 < 0.28


def test_fim_split_keeps_the_text_and_reaches_every_character_position() -> None:
    rng = random.Random(1)
    text = "abcdef"
    cuts: set[int] = set()
    for _ in range(500):
        sample = split_fim(text, rng, rate=1.0)
        assert sample.text == text
        cuts.update((len(sample.prefix), len(sample.prefix + sample.middle)))
    assert cuts == set(range(len(text) + 1))


def test_fim_split_is_reproducible_from_the_seed() -> None:
    first = [split_fim(CODE, random.Random(7)) for _ in range(3)]
    assert first == [split_fim(CODE, random.Random(7)) for _ in range(3)]


def test_psm_and_spm_put_sentinels_in_starcoder_order() -> None:
    p, m, s = [10, 11], [20], [30, 31]
    assert sample_ids(FimSample("psm", "", "", ""), p, m, s) == [
        FIM_PREFIX, 10, 11, FIM_SUFFIX, 30, 31, FIM_MIDDLE, 20, EOT]
    assert sample_ids(FimSample("spm", "", "", ""), p, m, s) == [
        FIM_PREFIX, FIM_SUFFIX, 30, 31, FIM_MIDDLE, 10, 11, 20, EOT]
    assert sample_ids(FimSample("plain", ""), p, [], []) == [10, 11, EOT]


def test_segments_are_tokenised_separately() -> None:
    seen: list[str] = []

    def encode(texts: list[str]) -> list[list[int]]:
        seen.extend(texts)
        return char_ids(texts)

    sample = FimSample("spm", "def f", "(x)", ":\n")
    (ids,) = encode_samples([sample], encode)
    assert seen == ["def f", "(x)", ":\n"]
    assert char_text(ids[2:ids.index(FIM_MIDDLE)]) == ":\n"
    assert char_text(ids[ids.index(FIM_MIDDLE) + 1:-1]) == "def f(x)"


def test_chunks_join_back_start_at_lines_and_respect_the_token_limit() -> None:
    text = "".join(f"line {i} " + "x" * (i % 7) + "\n" for i in range(60))
    offsets = [(i, i + 1) for i in range(len(text))]
    chunks = chunk_text(text, offsets, max_tokens=50)
    assert "".join(chunks) == text
    assert len(chunks) > 1
    assert all(len(c) <= 50 and c.endswith("\n") for c in chunks)


def test_a_line_longer_than_a_chunk_is_cut_inside() -> None:
    text = "y" * 95
    chunks = chunk_text(text, [(i, i + 1) for i in range(95)], max_tokens=40)
    assert [len(c) for c in chunks] == [40, 40, 15]


def test_pack_cuts_the_stream_into_full_rows() -> None:
    rows = pack([[5, 6, EOT], [7, EOT], [8, 9, 10, EOT]], seq_len=4)
    assert rows.tolist() == [[5, 6, EOT, 7], [EOT, 8, 9, 10]]


def test_epochs_are_reproducible_and_differ_by_seed() -> None:
    chunks = [CODE.replace("add", f"add{i}") for i in range(30)]
    first = build_sequences(chunks, char_ids, seq_len=64, seed=3)
    assert first.shape[1] == 64
    assert first.equal(build_sequences(chunks, char_ids, seq_len=64, seed=3))
    assert not first.equal(build_sequences(chunks, char_ids, seq_len=64, seed=4))
    # Every sample ends in one <|endoftext|>: one per chunk in the kept stream, give or take
    # the dropped tail.
    assert 25 <= int((first == EOT).sum()) <= 30


def test_chunk_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("abc", [(0, 1)], max_tokens=0)


# -- training that survives sessions --------------------------------------------------------


def write_corpus(folder: Path) -> None:
    """A tiny corpus with packages, as model.train.corpus writes it."""
    from model.train.data import Corpus, save_corpus
    train = [SourceFile(f"pkg{p}/mod{i}.py", CODE.replace("add", f"add_{p}_{i}") * 2, f"pkg{p}")
             for p in range(2) for i in range(2)]
    held_out = [SourceFile("held/x.py", CODE.replace("Point", "Vector") * 3, "held")]
    save_corpus(Corpus(train, held_out), folder)


def tiny_run(run_dir: Path, data: Path, *extra: str) -> dict[str, object]:
    from model.train.train import parse_args, run
    args = ["--data", str(data), "--layout", "repos", "--vocab-size", "300", "--n-layer", "1",
            "--n-embd", "32", "--n-head", "2", "--seq-len", "32", "--batch-size", "2",
            "--warmup-steps", "2", "--eval-rows", "2", "--precision", "fp32", "--threads", "1",
            "--seed", "5", *extra]
    if "--resume" not in extra:
        args = ["--run-dir", str(run_dir), *args]
    return run(parse_args(args))


@pytest.mark.slow
def test_a_resumed_run_equals_one_uninterrupted_run(tmp_path: Path) -> None:
    import json

    from safetensors.torch import load_file
    data = tmp_path / "data"
    write_corpus(data)
    whole = tiny_run(tmp_path / "whole", data, "--steps", "12")
    assert whole["complete"] is True
    half = tiny_run(tmp_path / "split", data, "--steps", "12", "--session-steps", "5")
    assert half["complete"] is False and half["steps"] == 5
    assert not (tmp_path / "split" / "final").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        tiny_run(tmp_path / "split", data, "--steps", "12")
    rest = run_resume(tmp_path / "split")
    assert rest["complete"] is True and rest["steps"] == 12 and rest["tokens"] == whole["tokens"]
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    assert rest["held_out_loss"] == whole["held_out_loss"]
    rows = [json.loads(line) for line in
            (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 5, 12]  # one log across the sessions
    assert rows[1]["epoch"] == 0 and rows[2]["epoch"] >= 1  # the data position crossed epochs
    assert all("held_out_bpb" in r and "tokens" in r for r in rows)


@pytest.mark.slow
def test_a_session_stopped_by_a_signal_saves_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from safetensors.torch import load_file

    import model.train.train as train
    data = tmp_path / "data"
    write_corpus(data)
    whole = tiny_run(tmp_path / "whole", data, "--steps", "8")
    real_step, calls = train.train_step, []

    def step_then_signal(*args: object, **kwargs: object) -> float:
        loss = real_step(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(loss)
        if len(calls) == 3:  # as if Ctrl-C came during the third step
            signal.raise_signal(signal.SIGTERM)
        return loss
    monkeypatch.setattr(train, "train_step", step_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    stopped = tiny_run(tmp_path / "split", data, "--steps", "8")
    assert stopped["complete"] is False and stopped["steps"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    monkeypatch.setattr(train, "train_step", real_step)
    rest = run_resume(tmp_path / "split")
    assert rest["complete"] is True and rest["steps"] == 8 and rest["tokens"] == whole["tokens"]
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "model.safetensors")
    assert all(a[key].equal(b[key]) for key in a)


@pytest.mark.slow
def test_a_resumed_run_can_be_given_a_longer_schedule(tmp_path: Path) -> None:
    import json

    from model.train.train import parse_args, run
    data = tmp_path / "data"
    write_corpus(data)
    first = tiny_run(tmp_path / "run", data, "--steps", "6", "--session-steps", "3")
    assert first["steps"] == 3
    longer = run(parse_args(["--resume", str(tmp_path / "run"), "--threads", "1",
                             "--steps", "9"]))
    assert longer["complete"] is True and longer["steps"] == 9
    saved = json.loads((tmp_path / "run" / "train_args.json").read_text())
    assert saved["steps"] == 9
    assert saved["lengthened"] == [{"at_step": 3, "from_steps": 6, "to_steps": 9}]
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 9]
    with pytest.raises(ValueError, match="at step 9"):
        run(parse_args(["--resume", str(tmp_path / "run"), "--threads", "1", "--steps", "5"]))


def run_resume(run_dir: Path) -> dict[str, object]:
    from model.train.train import parse_args, run
    return run(parse_args(["--resume", str(run_dir), "--threads", "1"]))


def test_a_device_that_is_not_there_or_not_a_device_is_named() -> None:
    import torch

    from model.train.train import training_device
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device name"):
        training_device("gpu0")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        training_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            training_device("cuda")


@pytest.mark.gpu
@pytest.mark.slow
def test_a_run_trained_on_the_gpu_resumes_on_the_cpu_and_agrees_with_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    data = tmp_path / "data"
    write_corpus(data)
    on_cpu = tiny_run(tmp_path / "cpu", data, "--steps", "8", "--device", "cpu")
    first = tiny_run(tmp_path / "gpu", data, "--steps", "8", "--session-steps", "4",
                     "--device", "cuda")
    assert first["steps"] == 4 and str(first["device"]) != str(on_cpu["device"])
    from model.train.train import parse_args, run
    rest = run(parse_args(["--resume", str(tmp_path / "gpu"), "--threads", "1",
                           "--device", "cpu"]))
    assert rest["complete"] is True and rest["tokens"] == on_cpu["tokens"]
    a = load_file(tmp_path / "cpu" / "final" / "model.safetensors")
    b = load_file(tmp_path / "gpu" / "final" / "model.safetensors")
    for key in a:  # fp32 on both: the same steps up to rounding in the kernels
        assert (a[key] - b[key]).abs().max() < 2e-3, key
    assert abs(float(str(rest["held_out_loss"])) - float(str(on_cpu["held_out_loss"]))) < 1e-2


def test_only_runs_scheduled_by_steps_or_tokens_resume(tmp_path: Path) -> None:
    from model.train.train import parse_args
    (tmp_path / "train_state.pt").write_bytes(b"")
    (tmp_path / "train_args.json").write_text('{"steps": null}')
    with pytest.raises(ValueError, match="wall-clock"):
        parse_args(["--resume", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        parse_args(["--resume", str(tmp_path / "nothing")])
    args = parse_args(["--run-dir", str(tmp_path), "--total-tokens", "1e6", "--batch-size", "4",
                       "--seq-len", "1000"])
    assert args.steps == 250


# -- evaluation on held-out packages -------------------------------------------------------


def test_held_out_packages_are_sampled_each_on_its_own_and_reported_beside_xz() -> None:
    from model.train.evaluate import per_package, sample_packages, xz_bits_per_byte
    files = [SourceFile(f"{p}/m{i}.py", CODE * (i + 1), p) for p in ("a", "b") for i in range(6)]
    chosen = sample_packages(files, max_bytes=3 * len(CODE))
    for p in ("a", "b"):
        mine = [f for f in chosen if f.package == p]
        assert mine and sum(f.nbytes for f in mine) <= 3 * len(CODE)
    assert sample_packages(files, None) == files
    assert sample_packages(list(reversed(files)), 3 * len(CODE)) == [
        f for p in ("b", "a") for f in chosen if f.package == p]
    bits = [8.0 * f.nbytes for f in files[:6]] + [2.0 * f.nbytes for f in files[6:]]
    rows = per_package(files, bits)
    assert [(r["package"], r["files"], r["bits_per_byte"]) for r in rows] == [
        ("a", 6, 8.0), ("b", 6, 2.0)]
    assert rows[0]["xz_bits_per_byte"] == round(xz_bits_per_byte([f.text for f in files[:6]]), 4)


def test_the_repository_header_is_context_never_scored() -> None:
    """--repo-header: `<reponame>package<filename>path` before the file, as in training; the
    file's bits are those of its own tokens after it, and prompts open with it."""
    from model.train.evaluate import LineSite, Scorer, file_nll_bits, fim_match, next_line_match
    from model.train.fim import EOT, FIM_PREFIX
    from model.train.repo_format import REPONAME
    scorer = Scorer.load("default", autocast=False)
    header = scorer.header("shop", "shop/orders.py")
    assert scorer.tok.decode(header, skip_special_tokens=False) == \
        "<reponame>shop<filename>shop/orders.py\n"
    assert scorer.header("", "orders.py") == []
    text = "def total(order):\n    return sum(order.values())\n"
    ids = scorer.encode(text)
    logp = torch.log_softmax(scorer.logits([EOT, *header, *ids]), dim=-1)
    first = 1 + len(header)
    expected = -float(sum(logp[first - 1 + i, t] for i, t in enumerate(ids))) / math.log(2)
    assert file_nll_bits(scorer, text, 512, header) == pytest.approx(expected, rel=1e-5)
    assert file_nll_bits(scorer, text, 512) != pytest.approx(expected, rel=1e-3)
    prompts: list[list[int]] = []

    def greedy(prompt: list[int], max_new: int, first_allowed: torch.Tensor | None = None
               ) -> bytes:
        prompts.append(list(prompt))
        return b""

    scorer.greedy = greedy  # type: ignore[method-assign]
    site = LineSite("def total(order):\n", "    return 1", "\n", "shop", "shop/orders.py")
    next_line_match(scorer, site, 8, repo_header=True)
    fim_match(scorer, site, "psm", 8, repo_header=True)
    next_line_match(scorer, site, 8)
    assert prompts[0][:1 + len(header)] == [EOT, *header]
    assert prompts[1][:len(header) + 1] == [*header, FIM_PREFIX]
    assert prompts[2][:2] != [EOT, REPONAME]


# -- the learning curve for a model card -----------------------------------------------------


def write_metrics(run_dir: Path, rows: list[tuple[int, int, float]]) -> None:
    import json
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "minutes": s / 10, "tokens": t, "held_out_bpb": b}) + "\n"
        for s, t, b in rows))


def test_the_curve_is_read_in_token_order_thinned_and_compared_at_equal_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from model.train.curve import at_tokens, main, read_curve, thinned
    # A session resumed from a checkpoint evaluated step 20 again: the later row wins.
    write_metrics(tmp_path / "big", [(0, 0, 3.5), (10, 1000, 2.5), (20, 2000, 2.2),
                                     (20, 2000, 2.1), (30, 3000, 2.0), (40, 4000, 1.9)])
    write_metrics(tmp_path / "small", [(0, 0, 3.4), (10, 1000, 2.6), (40, 4000, 2.3)])
    points = read_curve(tmp_path / "big")
    assert [(p.tokens, p.bpb) for p in points] == [
        (0, 3.5), (1000, 2.5), (2000, 2.1), (3000, 2.0), (4000, 1.9)]
    assert [p.tokens for p in thinned(points, 2000)] == [0, 2000, 4000]
    small = read_curve(tmp_path / "small")
    assert at_tokens(small, 1000) == 2.6 and at_tokens(small, 5000) is None
    assert 2.3 < at_tokens(small, 2000) < 2.6  # type: ignore[operator]
    main([str(tmp_path / "big"), "--every", "2000", "--compare", str(tmp_path / "small")])
    out = capsys.readouterr().out.splitlines()
    assert out[3].startswith("| 0.0M | 0 | 0 | 3.500 | 3.400 |") and len(out) == 7
    summary = json.loads(out[-1])
    assert summary["curve"] == [[0, 3.5], [2000, 2.1], [4000, 1.9]]
    assert summary["compare"]["at"][-1] == [4000, 2.3]


def test_a_broken_metrics_row_is_named(tmp_path: Path) -> None:
    from model.train.curve import read_curve
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "tokens": 5}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1: not a metrics row"):
        read_curve(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        read_curve(tmp_path / "nothing")
