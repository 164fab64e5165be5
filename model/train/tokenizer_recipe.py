"""Train the default model's byte-level BPE tokenizer, with StarCoder's special tokens and ids.

    python -m model.train.tokenizer_recipe --vocab-size 4096 --out runs/tokenizer-4096
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .data import SourceFile, load_corpus

log = logging.getLogger(__name__)

# StarCoder's special tokens; a token's position in this list is its id.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
    "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
    "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
    "<empty_output>", "<commit_before>", "<commit_msg>", "<commit_after>", "<reponame>",
)
EOS_TOKEN = "<|endoftext|>"


def untrained_tokenizer() -> Tokenizer:
    """StarCoder's pipeline: digits split one by one, then GPT-2's byte-level pre-tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A BPE of vocab_size entries: the special tokens, the 256 bytes, then merges."""
    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size must exceed {minimum} (specials + bytes), got {vocab_size}")
    tok = untrained_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    check_special_ids(tok)
    return tok


def check_special_ids(tok: Tokenizer) -> None:
    for expected, token in enumerate(SPECIAL_TOKENS):
        actual = tok.token_to_id(token)
        if actual != expected:
            raise ValueError(f"special token {token} has id {actual}, expected {expected}")


def tokenizer_config(model_max_length: int) -> dict[str, object]:
    """tokenizer_config.json as transformers' PreTrainedTokenizerFast reads it (no pad token)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "add_prefix_space": False,
        # transformers' default clean-up would remove spaces before punctuation in decoded code.
        "clean_up_tokenization_spaces": False,
    }


def save_tokenizer(tok: Tokenizer, folder: Path, model_max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = tokenizer_config(model_max_length)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {key: config[key] for key in
                   ("bos_token", "eos_token", "unk_token", "additional_special_tokens")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def bytes_per_token(tok: Tokenizer, files: Sequence[SourceFile]) -> float:
    """Compression of the tokenizer alone: UTF-8 bytes of the files over their token count."""
    encodings = tok.encode_batch([f.text for f in files], add_special_tokens=False)
    return sum(f.nbytes for f in files) / sum(len(e.ids) for e in encodings)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-size", type=int, nargs="+", default=[4096],
                        help="one or more sizes; each is trained and its compression printed")
    parser.add_argument("--data", type=Path, default=Path("runs/data"),
                        help="corpus cache folder (collected from the stdlib when empty)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the tokenizer files (with a single --vocab-size)")
    parser.add_argument("--model-max-length", type=int, default=1024)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    args = parse_args(argv)
    if args.out is not None and len(args.vocab_size) != 1:
        raise SystemExit("--out needs exactly one --vocab-size")
    corpus = load_corpus(args.data)
    for size in args.vocab_size:
        tok = train_tokenizer((f.text for f in corpus.train), size)
        ratio = bytes_per_token(tok, corpus.held_out)
        log.info("vocab %d: %.3f held-out bytes per token", size, ratio)
        if args.out is not None:
            save_tokenizer(tok, args.out, args.model_max_length)


if __name__ == "__main__":
    main()
