"""Tiny models built from configs, and byte-level BPE tokenizers trained locally.

Nothing here downloads anything: the embedded default, the tests and the benchmark build their models
from these helpers. Real backbones go through ``from_pretrained`` on a local directory or hub id.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    extra_special_tokens: Iterable[str] = (),
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE tokenizer on ``texts``.

    Byte-level means any Unicode text encodes (no unknown token) and decoding is exact. The EOS token
    doubles as BOS; a separate pad token keeps padding distinguishable from a generated EOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*SPECIAL_TOKENS, *[t for t in extra_special_tokens if t not in SPECIAL_TOKENS]]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    extra = [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 512,
    seed: int | None = None,
    dropout: float = 0.1,
):
    """A randomly initialised GPT-2 causal LM sized to ``tokenizer``; ``dropout`` applies to embeddings,
    attention and residuals (0.1 is GPT-2's own default)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if seed is not None:
        torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        resid_pdrop=dropout,
    )
    return GPT2LMHeadModel(config)


def tiny_encoder_config(
    tokenizer: PreTrainedTokenizerFast,
    num_labels: int,
    n_layer: int = 2,
    hidden: int = 64,
    n_head: int = 4,
    max_position_embeddings: int = 512,
):
    """A small BERT config for token or sequence classification reward models."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        intermediate_size=hidden * 4,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
