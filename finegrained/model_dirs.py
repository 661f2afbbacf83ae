"""Model directories: every one a command reads is checked here, and every model or checkpoint is written
through here.

Reading (``load_causal_lm``, ``load_value_trunk``, ``load_pretrained``, ``load_tokenizer``,
``read_reward_metadata``, ``read_safetensors``): a directory must exist (a missing path is "no such
directory", never a hub error; only a policy named by a hub id such as ``gpt2`` is fetched into the local
Hugging Face cache first, and then checked like any directory); its ``finegrained.json`` must match the schema below; its
safetensors files must parse; transformers' own loading must report no missing or mismatched key; its
weights must be finite; its kind must be the one the command needs (a causal LM for a policy or a value
trunk, a reward model for a judge); its tokenizer must be present, non-empty and fit the embedding. Every
failure is a ``FinegrainedError`` naming the directory and what is wrong.

Writing (``save_pretrained_dir``, ``save_module_file``): a model or checkpoint holding a NaN or infinite
value is refused, naming the directory and the first such tensor, before anything is written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import FinegrainedError, InputError, Problem
from .io import destination_of

METADATA_FILE = "finegrained.json"
FORMAT_VERSION = 1
#: ``finegrained.json`` ``kind`` of a reward model holding several categories on one backbone
JOINT_KIND = "joint"
REWARD_KINDS = ("span", "preference", JOINT_KIND)
GRANULARITIES = ("sub_sentence", "sentence", "sequence")
#: files that carry a tokenizer's vocabulary (``tokenizer_config.json`` alone carries none)
TOKENIZER_VOCAB_FILES = (
    "tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)  # fmt: skip
CONFIG_FILE = "config.json"


class NonFiniteWeightsError(FinegrainedError):
    """A model or checkpoint holds a NaN or infinite value (refused on save and on load)."""


# ----------------------------------------------------------------------------------------------------
# Non-finite values


def first_non_finite(named_tensors: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or infinite value, or None."""
    import torch

    for name, tensor in named_tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def module_tensors(module) -> Iterable[tuple[str, Any]]:
    """Parameters and buffers of ``module`` by name (what ``save_pretrained`` / ``save_model`` write)."""
    yield from module.named_parameters()
    yield from module.named_buffers()


def optimizer_tensors(optimizer) -> Iterable[tuple[str, Any]]:
    """Every tensor of an optimizer's state, named ``state[<param index>].<key>``."""
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            yield f"state[{index}].{key}", value


def refuse_non_finite(named_tensors: Iterable[tuple[str, Any]], directory: str | Path, what: str) -> None:
    """Raise ``NonFiniteWeightsError`` naming ``directory`` (where it would be written) and the first bad tensor."""
    bad = first_non_finite(named_tensors)
    if bad is not None:
        raise NonFiniteWeightsError(
            f"{destination_of(directory)}: not written: {what} has NaN or infinite values (first: tensor {bad!r}); "
            "the training diverged (try a lower learning rate)"
        )


# ----------------------------------------------------------------------------------------------------
# The one write path for weights


def save_pretrained_dir(directory: str | Path, model, tokenizer=None) -> None:
    """``model.save_pretrained`` (safetensors) and ``tokenizer.save_pretrained`` into ``directory`` (normally
    the temporary directory of ``io.atomic_directory``), refused when the model holds non-finite values."""
    refuse_non_finite(module_tensors(model), directory, "the model")
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_module_file(module, path: str | Path, what: str) -> None:
    """``safetensors.torch.save_model`` of ``module`` to ``path``, refused when it holds non-finite values."""
    from safetensors.torch import save_model

    refuse_non_finite(module_tensors(module), Path(path).parent, what)
    save_model(module, str(path))


# ----------------------------------------------------------------------------------------------------
# Reading: directories, safetensors, configs


def fail(directory: str | Path, role: str, reason: str) -> FinegrainedError:
    return FinegrainedError(f"{directory}: cannot use it as {role}: {reason}")


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` reads as a file-system path rather than a hub id (``org/name`` or ``name``): it is
    absolute, starts with ``.`` or ``~``, has two or more ``/``, or its first part is a local directory."""
    name = str(name)
    if name.startswith((".", "~", os.sep)) or (os.altsep and os.altsep in name) or name.count("/") >= 2:
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def require_directory(directory: str | Path, role: str, hub: bool = False) -> Path:
    """``directory`` as a Path; "no such directory" when it does not exist. With ``hub``, a name that reads
    as a hub id (``gpt2``, ``org/name``) rather than a path is resolved to its snapshot in the local Hugging
    Face cache, downloaded first when the hub is reachable (``HF_HUB_OFFLINE=1``: the cache only), so the
    same checks apply to it as to any directory."""
    if directory is None or str(directory).strip() == "":
        raise FinegrainedError(f"no directory given for {role}")
    path = Path(str(directory)).expanduser()
    if not path.exists() and hub and not looks_like_local_path(str(directory)):
        return hub_snapshot(str(directory), role)
    if not path.exists():
        raise FinegrainedError(f"{path}: no such directory ({role})")
    if not path.is_dir():
        raise fail(path, role, "not a directory")
    return path


def hub_snapshot(repo_id: str, role: str) -> Path:
    """The local snapshot of hub repository ``repo_id`` (safetensors weights, config, tokenizer files)."""
    from huggingface_hub import snapshot_download

    try:
        # no *.bin / *.pt / *.pth: pickled weights are never loaded (see load_pretrained)
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]))
    except Exception as e:  # noqa: BLE001 - any hub or cache failure is the user's missing model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FinegrainedError(f"{repo_id}: no such directory, and not loadable as a Hugging Face hub id for {role} "
                               f"({first})") from None  # fmt: skip


def read_safetensors(path: str | Path, role: str) -> dict[str, Any]:
    """Every tensor of a safetensors file; a clear error when it is empty, truncated or not safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise fail(path.parent, role, f"no {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise fail(path.parent, role, f"{path.name} is not a readable safetensors file ({e})") from None


def check_safetensors_headers(directory: Path, role: str) -> None:
    """Every ``*.safetensors`` file (and every shard an index names) parses: header complete, data covered."""
    from safetensors import SafetensorError, safe_open

    index = directory / "model.safetensors.index.json"
    files = sorted(directory.glob("*.safetensors"))
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise fail(directory, role, f"{index.name} is unreadable ({e})") from None
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            raise fail(directory, role, f"weight shard(s) missing: {', '.join(missing)}")
    if not files:
        bins = [p.name for p in directory.glob("*.bin")]
        found = f" (found {', '.join(bins)}: only safetensors weights are read)" if bins else ""
        raise fail(directory, role, f"no model.safetensors{found}")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise fail(directory, role, f"{file.name} is not a readable safetensors file ({e})") from None


def read_config(directory: Path, role: str):
    """The directory's transformers config (``config.json``), or a clear error."""
    from transformers import AutoConfig

    if not (directory / CONFIG_FILE).is_file():
        raise fail(directory, role, f"not a Hugging Face model directory (no {CONFIG_FILE})")
    try:
        return AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(directory, role, f"unreadable {CONFIG_FILE} ({e})") from None


def architecture_names(mapping: Mapping) -> set[str]:
    """Class names of a transformers ``*_MAPPING_NAMES`` dict (values are names or tuples of names)."""
    names: set[str] = set()
    for value in mapping.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def require_architecture(config, directory: Path, role: str, mapping: Mapping, kind: str) -> None:
    """The config's ``architectures`` (or, without them, its ``model_type``) must be of ``mapping``'s kind."""
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures:
        if not set(architectures) & architecture_names(mapping):
            raise fail(directory, role, f"not a {kind} (config.architectures: {', '.join(architectures)})")
    elif getattr(config, "model_type", None) not in mapping:
        raise fail(directory, role, f"not a {kind} (model_type {getattr(config, 'model_type', None)!r})")


def load_pretrained(
    directory: str | Path, factory: Callable, role: str, allow_missing: Iterable[str] = (), **kwargs
):
    """``factory(directory, **kwargs)`` (an HF ``from_pretrained``) with every check of the module doc but
    the kind: refuses any missing (except names starting with an ``allow_missing`` prefix) or mismatched key
    in transformers' loading report, and non-finite weights. Unexpected keys (another task's head) are fine."""
    from safetensors import SafetensorError

    path = require_directory(directory, role)
    read_config(path, role)
    check_safetensors_headers(path, role)
    try:
        model, info = factory(
            str(path), local_files_only=True, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as e:
        raise fail(path, role, f"the weights do not load ({e})") from None
    prefixes = tuple(allow_missing)
    missing = sorted(k for k in info.get("missing_keys", ()) if not (prefixes and k.startswith(prefixes)))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    if missing:
        raise fail(path, role, f"weights missing for {len(missing)} tensor(s) of {type(model).__name__} "
                               f"(first: {', '.join(missing[:3])}): not a model of this kind, or damaged")
    if mismatched or info.get("error_msgs"):
        detail = ", ".join(mismatched[:3]) or "; ".join(map(str, info["error_msgs"][:2]))
        raise fail(path, role, f"weights do not match the config's shapes ({detail})")
    bad = first_non_finite(module_tensors(model))
    if bad is not None:
        raise NonFiniteWeightsError(f"{path}: cannot use it as {role}: tensor {bad!r} has NaN or infinite values")
    return model


def load_tokenizer(directory: str | Path, role: str, embedding_rows: int | None = None):
    """The directory's own tokenizer: vocabulary files present, non-empty, fitting ``embedding_rows``."""
    from transformers import AutoTokenizer

    path = require_directory(directory, role)
    if not any((path / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise fail(path, role, f"no tokenizer files (expected one of {', '.join(TOKENIZER_VOCAB_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise fail(path, role, f"the tokenizer does not load ({e})") from None
    if embedding_rows is not None:
        check_tokenizer_fits(tokenizer, embedding_rows, path, role)
    elif len(tokenizer) == 0:
        raise fail(path, role, "the tokenizer is empty")
    return tokenizer


def check_tokenizer_fits(tokenizer, embedding_rows: int, directory: Path, role: str) -> None:
    """Every token id must have an embedding row, and the embedding must not be far larger than the
    vocabulary (padding to a multiple of 64 or 128 is common; a tokenizer of another model is not)."""
    size = len(tokenizer)
    if size == 0:
        raise fail(directory, role, "the tokenizer is empty")
    if size > embedding_rows:
        raise fail(directory, role, f"the tokenizer has {size} tokens but the model's embedding only {embedding_rows} rows")
    if embedding_rows - size > max(128, embedding_rows // 32):
        raise fail(directory, role, f"the tokenizer has {size} tokens but the model's embedding {embedding_rows} rows: "
                                    "not this model's tokenizer")


def embedding_rows(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


# ----------------------------------------------------------------------------------------------------
# Policies and value trunks


def check_causal(model, directory: Path, role: str, vocab_size: int, forward: Callable | None = None) -> None:
    """Changing the last token must not change any earlier position's output: a bidirectional encoder
    would let a value (or a policy) see later tokens. ``forward(ids, mask) -> (1, L, ...)`` tensor."""
    import torch

    forward = forward or (lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state)
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, max(1, vocab_size), (1, 6), generator=generator).to(device)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % max(2, vocab_size)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            before, after = forward(ids, mask)[:, :-1].float(), forward(changed, mask)[:, :-1].float()
    finally:
        model.train(was_training)
    if not torch.allclose(before, after, atol=1e-4, rtol=1e-4):
        raise fail(directory, role, "not causal: its outputs at a position depend on later tokens (a bidirectional encoder?)")


def require_decoder(config, directory: Path, role: str) -> None:
    """Refuse by config what cannot be causal: encoder-decoders, and encoders (BERT, RoBERTa, ...: model types
    with a masked-LM head) not configured as decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise fail(directory, role, f"an encoder-decoder model ({model_type}), not a decoder-only causal LM")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise fail(directory, role, f"not a causal (decoder) model (model_type {model_type!r})")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise fail(directory, role, f"not causal: a bidirectional encoder (model_type {model_type!r} without is_decoder)")


def load_causal_lm(directory: str | Path, role: str = "a policy"):
    """(model, tokenizer) of a causal-LM directory, checked (see the module doc); eval mode, on CPU."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = require_directory(directory, role, hub=True)
    config = read_config(path, role)
    require_architecture(config, path, role, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "causal LM")
    require_decoder(config, path, role)
    model = load_pretrained(path, AutoModelForCausalLM.from_pretrained, role)
    tokenizer = load_tokenizer(path, role, embedding_rows(model))
    check_causal(model, path, role, len(tokenizer), lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    return model.eval(), tokenizer


def load_value_trunk(directory: str | Path, policy_tokenizer, role: str = "the value model (value.init_from)"):
    """A causal backbone (``AutoModel``) for a value model, whose vocabulary is the policy's: every policy
    token has the same id in the directory's tokenizer, and an embedding row."""
    from transformers import AutoModel

    path = require_directory(directory, role)
    require_decoder(read_config(path, role), path, role)
    trunk = load_pretrained(path, AutoModel.from_pretrained, role, allow_missing=("pooler.",))
    if not any((path / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise fail(path, role, "no tokenizer files, so its vocabulary cannot be checked against the policy's "
                               "(save the tokenizer with the model)")
    tokenizer = load_tokenizer(path, role, embedding_rows(trunk))
    theirs, ours = tokenizer.get_vocab(), policy_tokenizer.get_vocab()
    different = [token for token, index in ours.items() if theirs.get(token) != index]
    if different or len(policy_tokenizer) > embedding_rows(trunk):
        example = f" (e.g. {different[0]!r})" if different else ""
        raise fail(path, role, f"its vocabulary differs from the policy's: {len(different)} of the policy's "
                               f"{len(ours)} tokens have another id or none{example}")
    check_causal(trunk, path, role, len(policy_tokenizer))
    return trunk


# ----------------------------------------------------------------------------------------------------
# Reward-model metadata (finegrained.json)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_normalisation(value, field: str, problem: Callable[[str, str], None]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        problem(field, f"expected null or {{mean, std}}, got {type(value).__name__}")
    elif not (_is_number(value.get("mean")) and _is_number(value.get("std")) and value["std"] > 0):
        problem(field, f"expected finite mean and a positive std, got {value!r}")


def _check_segmentation(value, problem: Callable[[str, str], None]) -> None:
    import dataclasses

    from .schema import SegmentationConfig

    if value is None:
        return
    if not isinstance(value, dict):
        problem("segmentation", f"expected a mapping, got {type(value).__name__}")
        return
    fields = {f.name: f.type for f in dataclasses.fields(SegmentationConfig)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        problem("segmentation", f"unknown key(s) {unknown}")
    for key in ("sentence", "split_after", "language"):
        if key in value and not isinstance(value[key], str):
            problem(f"segmentation.{key}", "must be a string")
    if "min_words" in value and not _is_int(value["min_words"]):
        problem("segmentation.min_words", "must be an integer")


#: finegrained.json keys of every reward model: key -> (check, description, required)
_COMMON_FIELDS: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "format_version": (_is_int, "an integer", True),
    "max_length": (lambda v: _is_int(v) and v > 0, "a positive integer", True),
    "min_overlap_words": (lambda v: _is_int(v) and v > 0, "a positive integer", False),
    "label_map": (lambda v: v is None or isinstance(v, dict), "null or a mapping", False),
    "schema": (lambda v: isinstance(v, dict), "a mapping", False),
    "data": (lambda v: isinstance(v, dict), "a mapping", False),
    "training": (lambda v: isinstance(v, dict), "a mapping", False),
    "metrics": (lambda v: isinstance(v, dict), "a mapping", False),
    "backbone": (lambda v: isinstance(v, str), "a string", False),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)", False),
}


def _check_category_entry(entry: Any, prefix: str, problem: Callable[[str, str], None]) -> None:
    """``kind``, ``granularity``, ``uses_context``, ``error_types``, ``normalisation`` of one category."""
    if not isinstance(entry, dict):
        problem(prefix.rstrip(".") or "(top level)", f"expected a mapping, got {type(entry).__name__}")
        return
    kind, granularity = entry.get("kind"), entry.get("granularity")
    if kind not in ("span", "preference"):
        problem(f"{prefix}kind", f"unknown kind {kind!r} (expected span or preference)")
    if granularity not in GRANULARITIES:
        problem(f"{prefix}granularity", f"unknown granularity {granularity!r} (expected {', '.join(GRANULARITIES)})")
    elif kind in ("span", "preference") and (kind == "preference") != (granularity == "sequence"):
        problem(f"{prefix}granularity", f"{granularity!r} does not go with kind {kind!r}")
    if "uses_context" in entry and not isinstance(entry["uses_context"], bool):
        problem(f"{prefix}uses_context", "must be true or false")
    error_types = entry.get("error_types", [])
    if not (isinstance(error_types, list) and all(isinstance(t, str) for t in error_types)):
        problem(f"{prefix}error_types", "must be a list of strings")
    _check_normalisation(entry.get("normalisation"), f"{prefix}normalisation", problem)


def metadata_problems(metadata: Any, file: str) -> list[Problem]:
    """Every way ``metadata`` (a parsed finegrained.json) differs from the schema of a reward model."""
    problems: list[Problem] = []

    def problem(field: str, message: str) -> None:
        problems.append(Problem(file, None, message, field))

    if not isinstance(metadata, dict):
        return [Problem(file, None, f"must be a JSON object, got {type(metadata).__name__}")]
    kind = metadata.get("kind")
    if kind not in REWARD_KINDS:
        problem("kind", f"unknown kind {kind!r} (expected {', '.join(REWARD_KINDS)})")
        return problems
    for key, (check, description, required) in _COMMON_FIELDS.items():
        if key not in metadata:
            if required:
                problem(key, "missing")
        elif not check(metadata[key]):
            problem(key, f"must be {description}, got {metadata[key]!r}")
    if _is_int(metadata.get("format_version")) and metadata["format_version"] > FORMAT_VERSION:
        problem("format_version", f"{metadata['format_version']} is newer than this finegrained reads ({FORMAT_VERSION})")
    _check_segmentation(metadata.get("segmentation"), problem)
    needs_marker = kind == JOINT_KIND or kind == "span"
    if needs_marker and not (isinstance(metadata.get("marker_token"), str) and metadata["marker_token"]):
        problem("marker_token", "a span or joint reward model needs its marker token (a non-empty string)")
    if kind == JOINT_KIND:
        categories = metadata.get("categories")
        if not (isinstance(categories, dict) and categories):
            problem("categories", "a joint reward model needs a non-empty mapping of category -> settings")
        else:
            for name, entry in categories.items():
                _check_category_entry(entry, f"categories.{name}.", problem)
    else:
        if not (isinstance(metadata.get("category"), str) and metadata["category"]):
            problem("category", "must be a non-empty string")
        _check_category_entry(metadata, "", problem)
    return problems


def read_reward_metadata(model_dir: str | Path, role: str = "a reward model") -> dict[str, Any]:
    """``finegrained.json`` of a reward-model directory, checked against the schema (every problem listed)."""
    path = require_directory(model_dir, role) / METADATA_FILE
    if not path.is_file():
        raise FinegrainedError(
            f"{model_dir}: not a reward-model directory (no {METADATA_FILE}); train one with 'finegrained train-rm'"
        )
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(Problem(str(path), None, f"unreadable metadata: {e}")) from None
    problems = metadata_problems(metadata, str(path))
    if problems:
        raise InputError(problems)
    return metadata


def check_local_source(name_or_path: str | os.PathLike, option: str) -> None:
    """A clear "no such directory" for a ``option`` value that looks like a local path and is missing,
    instead of a failed hub connection."""
    if looks_like_local_path(str(name_or_path)) and not Path(str(name_or_path)).expanduser().exists():
        raise FinegrainedError(f"{option}={name_or_path}: no such directory")
