"""A small random-weight checkpoint (config, safetensors, byte-level BPE tokenizer with the
StarCoder special tokens) for the server's tests and benchmark, which must not need the
packaged default model."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from model import GPTBigCodeConfig, GPTBigCodeForCausalLM

STARCODER_SPECIALS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]
SAMPLE = Path(__file__).resolve().parents[1] / "lsp_server" / "demo_sample.py"
CORPUS = [
    inspect.getsource(textwrap),
    SAMPLE.read_text(encoding="utf-8"),
    "s = '😀 emoji 🎉'  # 変数 = 値, 世界\r\n" * 20,
]


def train_tokenizer(
    vocab_size: int, specials: list[str] = STARCODER_SPECIALS, corpus: list[str] = CORPUS,
    added_after: list[str] | None = None,
) -> Backend:
    """A byte-level BPE with `specials` at ids 0.. (the StarCoder layout by default), and
    `added_after` special tokens appended after the vocabulary (SantaCoder's FIM tokens)."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    if added_after:
        backend.add_special_tokens(added_after)
    return backend


def build_checkpoint(
    folder: Path,
    *,
    vocab_size: int = 512,
    n_positions: int = 1024,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    specials: list[str] = STARCODER_SPECIALS,
    seed: int = 0,
) -> Path:
    """Write a random GPTBigCode checkpoint with its tokenizer into `folder`.

    The special tokens' embedding rows are shrunk so that greedy decoding practically never
    picks them: generations then run to their token budget, which the cancellation tests
    rely on.
    """
    backend = train_tokenizer(vocab_size, specials)
    torch.manual_seed(seed)
    config = GPTBigCodeConfig(
        vocab_size=backend.get_vocab_size(), n_positions=n_positions, n_embd=n_embd,
        n_layer=n_layer, n_head=n_head, multi_query=True, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, initializer_range=0.3, bos_token_id=0, eos_token_id=0,
    )
    net = GPTBigCodeForCausalLM(config).eval()
    with torch.no_grad():
        net.transformer.wte.weight[: len(specials)] *= 0.01
    folder.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(folder)
    backend.save(str(folder / "tokenizer.json"))
    return folder
