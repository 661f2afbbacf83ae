"""Where a segment's reward lands: from char spans judged on text back to the policy's own tokens.

The reward models judge text; the policy generated token ids. The bridge is each generated token's
character range in the decoded response, computed from the generated ids themselves, never by
re-tokenising the text (sampled id sequences are often not what the tokenizer would produce).

``decode_with_offsets`` gives, for every generated token, ``token_ends[k]``: the exclusive end, in the
decoded text, of the last character that token completes. A token that completes no character (the
first bytes of a multi-byte character, a special token, anything after the first EOS) gets the end of the
previous one. The text is ``tokenizer.decode(ids up to the first EOS, skip_special_tokens=True,
clean_up_tokenization_spaces=False)``; the PPO learner hands exactly this text to the reward models.

Offsets come from each token's bytes, fed through an incremental UTF-8 decoder:

- byte-level BPE (GPT-2 style): a token's piece maps back to bytes through GPT-2's byte table (cached per
  tokenizer); when every token holds whole characters, the ends are a running sum;
- SentencePiece style (Metaspace '▁' for spaces, ``<0xNN>`` byte-fallback pieces): pieces map to bytes
  with '▁' read as a space, allowing for the decoder dropping the first leading space.

Either way the result is checked against ``tokenizer.decode``; a response where they differ (an unusual
normaliser or decoder, an added token) takes the exact slow route: prefix decoding, ``ends[k]`` = the
length of the longest common prefix of ``decode(ids[:k + 1])`` and the full text (quadratic per response).

``place_rewards`` puts each segment's reward on the token that completes the segment's last non-space
character (segments are trimmed, so that is the first token with ``token_ends >= segment end``) and each
sequence-level reward on the last real token of the response (its EOS when it has one).
"""

from __future__ import annotations

import codecs
import functools
import itertools
import re
import weakref
from dataclasses import dataclass

import torch

from ..rl.types import RewardBreakdown


@dataclass
class DecodedResponse:
    text: str  # what the reward models judge: the response decoded without special tokens
    token_ends: list[int]  # per generated token, exclusive char end in ``text`` of the last char it completes


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table: printable stand-in character -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


# Per tokenizer (weakly held, so a dropped tokenizer frees its table): for every id, its byte string
# (b"" for special tokens, None for an added token that is not byte-level) and how many characters
# it decodes to on its own (None when its bytes are not complete UTF-8, e.g. half an emoji).
_BYTE_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _byte_table(tokenizer) -> tuple[list[bytes | None], list[int | None]]:
    try:
        return _BYTE_TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    token_bytes: list[bytes | None] = []
    n_chars: list[int | None] = []
    for i, piece in enumerate(pieces):
        if i in special:
            b = b""
        elif piece is None:
            b = None
        else:
            try:
                b = bytes(table[c] for c in piece)
            except KeyError:  # an added (non byte-level) token: that response takes the general route
                b = None
        token_bytes.append(b)
        try:
            n_chars.append(None if b is None else len(b.decode("utf-8")))
        except UnicodeDecodeError:
            n_chars.append(None)
    try:
        _BYTE_TABLES[tokenizer] = (token_bytes, n_chars)
    except TypeError:  # not weak-referenceable: rebuild next time (correct, only slower)
        pass
    return token_bytes, n_chars


def _ends_byte_level(token_bytes: list[bytes]) -> tuple[str, list[int]]:
    """Text and char ends from each token's bytes, fed through an incremental UTF-8 decoder so that a
    character split across tokens is counted on the token holding its last byte."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text_parts, ends, n = [], [], 0
    for b in token_bytes:
        piece = decoder.decode(b)
        text_parts.append(piece)
        n += len(piece)
        ends.append(n)
    tail = decoder.decode(b"", final=True)  # an unfinished character at the very end
    if tail:
        text_parts.append(tail)
        if ends:
            ends[-1] += len(tail)
    return "".join(text_parts), ends


def _fast_byte_level(table: tuple[list, list], ids: list[int]) -> tuple[str, list[int]] | None:
    token_bytes, n_chars = table
    vocab = len(token_bytes)
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        return None
    pieces = [token_bytes[i] for i in ids]
    if None in pieces:
        return None
    counts = [n_chars[i] for i in ids]
    if None not in counts:  # every token is whole characters (the usual case): ends are a running sum
        return b"".join(pieces).decode("utf-8"), list(itertools.accumulate(counts))
    return _ends_byte_level(pieces)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _fast_metaspace(tokenizer, ids: list[int], text: str) -> list[int] | None:
    """SentencePiece-style pieces: '▁' stands for a space, ``<0xNN>`` (byte fallback) for one byte, the
    decoder drops the first leading space. Char ends from the pieces' bytes, or None when that model of
    the tokenizer does not reproduce ``text`` exactly (then the caller decodes prefixes)."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    token_bytes = []
    for i, piece in zip(ids, pieces):
        if i in special:
            token_bytes.append(b"")
        elif piece is None:
            return None
        else:
            match = _BYTE_PIECE.fullmatch(piece)
            token_bytes.append(bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode("utf-8"))
    fast_text, ends = _ends_byte_level(token_bytes)
    if fast_text == text:
        return ends
    if fast_text[:1] == " " and fast_text[1:] == text:  # the decoder stripped the leading '▁'
        return [max(e - 1, 0) for e in ends]
    return None


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _decode_many(tokenizer, batch: list[list[int]]) -> list[str]:
    """``_decode`` of every row. A fast tokenizer's Rust backend decodes the whole batch in one call
    (the Python wrapper's per-row checks cost more than the decoding); it is the same decoding, since
    the wrapper only adds the space clean-up we turn off."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch(batch, skip_special_tokens=True)
    return [_decode(tokenizer, ids) for ids in batch]


def _ends_by_prefix(tokenizer, ids: list[int], text: str) -> list[int]:
    ends, best = [], 0
    for k in range(len(ids)):
        prefix = _decode(tokenizer, ids[: k + 1])
        common = 0
        limit = min(len(prefix), len(text))
        while common < limit and prefix[common] == text[common]:
            common += 1
        best = max(best, common)
        ends.append(best)
    return ends


def decode_with_offsets(tokenizer, response_ids: list[list[int]]) -> list[DecodedResponse]:
    """Decode generated responses and give each token's char end (see the module docstring).

    ``response_ids``: per response, the generated ids (an EOS and anything after it may be included).
    The text is ``tokenizer.decode(ids up to the first EOS, skip_special_tokens=True,
    clean_up_tokenization_spaces=False)``: what the reward models must judge. Tokens from the first EOS on
    add no text and get the final end. Returns one ``DecodedResponse`` per response with
    ``len(token_ends) == len(ids)``."""
    eos = tokenizer.eos_token_id
    kept = []
    for ids in response_ids:
        ids = [int(i) for i in ids]
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos) + 1]
        kept.append(ids)
    texts = _decode_many(tokenizer, kept)
    table = _byte_table(tokenizer) if _is_byte_level(tokenizer) else None
    results = []
    for ids, full, text in zip(kept, response_ids, texts):
        if table is not None:
            fast = _fast_byte_level(table, ids)
            ends = fast[1] if fast is not None and fast[0] == text else None  # exactness check
        else:
            ends = _fast_metaspace(tokenizer, ids, text)
        if ends is None:  # the slow, always-right route
            ends = _ends_by_prefix(tokenizer, ids, text)
        ends = ends + [ends[-1] if ends else 0] * (len(full) - len(ids))
        results.append(DecodedResponse(text, ends))
    return results


def place_rewards(breakdown: RewardBreakdown, decoded: list[DecodedResponse], response_mask: torch.Tensor) -> torch.Tensor:
    """Per-category token rewards (B, T, K), K in ``breakdown.names`` order.

    ``response_mask`` (B, T): True for real response tokens (up to and including EOS), left-aligned.
    Span categories: each segment's reward on the first token whose char end reaches the segment's end;
    sequence categories: the sample's rewards summed on its last real token. Samples without real tokens
    get nothing."""
    B, T = response_mask.shape
    K = len(breakdown.names)
    out = torch.zeros((B, T, K), dtype=torch.float32)
    lengths = response_mask.sum(-1).tolist()  # (B,)
    # Padded char ends (B, T); positions past a response's length never match (int64 max).
    big = torch.iinfo(torch.int64).max
    # One tensor from padded Python lists: far cheaper than a small tensor per response.
    ends = torch.tensor([list(d.token_ends[:T]) + [big] * (T - min(len(d.token_ends), T)) for d in decoded], dtype=torch.int64)
    ends = ends.reshape(B, T)  # also (B, T) when B == 0
    last = torch.tensor([max(n - 1, 0) for n in lengths], dtype=torch.int64)  # (B,)
    has_tokens = torch.tensor([n > 0 for n in lengths])
    for k, category in enumerate(breakdown.categories.values()):
        if category.granularity == "sequence":
            totals = torch.tensor([float(sum(r)) for r in category.rewards])  # (B,)
            out[torch.arange(B)[has_tokens], last[has_tokens], k] += totals[has_tokens]
            continue
        rows, seg_ends, values = [], [], []
        for b, (segments, rewards) in enumerate(zip(category.segments, category.rewards)):
            if lengths[b] and segments:
                rows += [b] * len(segments)
                seg_ends += [end for _, end in segments]
                values += rewards
        if not rows:
            continue
        rows_t = torch.tensor(rows, dtype=torch.int64)
        queries = torch.tensor(seg_ends, dtype=torch.int64).unsqueeze(-1)  # (S, 1)
        positions = torch.searchsorted(ends[rows_t], queries).squeeze(-1)  # (S,): first k with end >= query
        positions = torch.minimum(positions, last[rows_t])  # a segment past the text lands on the last token
        out.index_put_((rows_t, positions, torch.full_like(rows_t, k)), torch.tensor(values, dtype=torch.float32), accumulate=True)
    return out.to(response_mask.device)
