"""Where a segment's reward lands: from char spans judged on text back to the policy's own tokens.

The reward models judge text; the policy generated token ids. The bridge is each generated token's
character range in the decoded response, computed from the generated ids themselves, never by
re-tokenising the text (sampled id sequences are often not what the tokenizer would produce).

``decode_with_offsets`` gives, for every generated token, ``token_ends[k]``: the exclusive end, in the
decoded text, of the last character that token completes. A token that completes no character (the
first bytes of a multi-byte character, a special token, anything after the first EOS) gets the end of the
previous one. The text is ``tokenizer.decode(ids up to the first EOS, skip_special_tokens=True,
clean_up_tokenization_spaces=False)``; the PPO learner hands exactly this text to the reward models.

Offsets come from each token's bytes:

- byte-level BPE (GPT-2 style): a token's piece maps back to bytes through GPT-2's byte table (cached per
  tokenizer, with each token's character count). Rows whose tokens all hold whole characters (the usual
  case) are done for the whole batch at once with numpy (running character counts); a row with a token
  holding part of a character goes through ``_ends_byte_level``;
- SentencePiece style (Metaspace '▁' for spaces, ``<0xNN>`` byte-fallback pieces): pieces map to bytes
  with '▁' read as a space, allowing for the decoder dropping the first leading space.

A character split across tokens belongs to the token holding its last byte. Bytes that are not UTF-8
(sampling can produce them) decode to U+FFFD, which belongs to the token holding its first byte: that is
where a decoded prefix already shows it, and ``token_ends`` agrees with decoding prefixes everywhere.

Either way the result is checked against ``tokenizer.decode``; a response where they differ (an unusual
normaliser or decoder, an added token) takes the exact slow route: prefix decoding, ``ends[k]`` = the
length of the longest common prefix of ``decode(ids[:k + 1])`` and the full text (quadratic per response).

``place_rewards`` puts each segment's reward on the token that completes the segment's last non-space
character (segments are trimmed, so that is the first token with ``token_ends >= segment end``) and each
sequence-level reward on the last real token of the response (its EOS when it has one).
"""

from __future__ import annotations

import bisect
import codecs
import functools
import itertools
import re
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .types import RewardBreakdown


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


def _byte_table(tokenizer) -> tuple[list[bytes | None], list[int | None], np.ndarray]:
    """``(token_bytes, n_chars, n_chars_array)`` for every id; the array (vocab,) int64 holds -1 for None."""
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
    result = (token_bytes, n_chars, np.array([-1 if (n is None or b is None) else n for n, b in zip(n_chars, token_bytes)], dtype=np.int64))
    try:
        _BYTE_TABLES[tokenizer] = result
    except TypeError:  # not weak-referenceable: rebuild next time (correct, only slower)
        pass
    return result


_REPLACEMENT = "\ufffd"
_ERROR_SPANS = threading.local()  # the byte spans the decoder replaced, collected by the handler below


def _record_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    """``errors="replace"`` that also notes which bytes each U+FFFD stands for."""
    _ERROR_SPANS.spans.append((error.start, error.end))
    return _REPLACEMENT, error.end


codecs.register_error("finegrained.placement.record", _record_and_replace)


def _utf8_length(char: str) -> int:
    code = ord(char)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4


def _credit_stretch(stretch: list[bytes], first_token: int, completed: list[int]) -> str:
    """Decode tokens ``first_token, ...`` (their bytes ``stretch``, with nothing pending before or after)
    and credit each character to a token: the one holding its last byte -- except a U+FFFD, credited to
    the one holding its first byte, because a decoded prefix already shows it there (truncated bytes
    decode to U+FFFD too), and ``token_ends`` follows what prefixes of the response show."""
    _ERROR_SPANS.spans = spans = []
    text = b"".join(stretch).decode("utf-8", errors="finegrained.placement.record")
    byte_ends = list(itertools.accumulate(map(len, stretch)))  # exclusive byte end of each token
    position, next_error = 0, 0
    for char in text:
        if next_error < len(spans) and position == spans[next_error][0]:  # a replaced invalid sequence
            holder = bisect.bisect_right(byte_ends, position)
            position = spans[next_error][1]
            next_error += 1
        else:
            size = _utf8_length(char)
            holder = bisect.bisect_right(byte_ends, position if char == _REPLACEMENT else position + size - 1)
            position += size
        completed[first_token + holder] += 1
    return text


def _ends_byte_level(token_bytes: list[bytes], n_chars: list[int | None] | None = None) -> tuple[str, list[int]]:
    """Text and char ends from each token's bytes (``n_chars``: characters per token when its bytes are
    whole UTF-8, None otherwise; worked out here when not given).

    A token of whole characters met with nothing pending simply adds its characters. From a token holding
    part of a character until a token boundary with nothing pending (an incremental decoder tells), the
    stretch is decoded at once and its characters credited one by one (``_credit_stretch``). Errors are
    replaced by U+FFFD, as the tokenizers' decoders do."""
    if n_chars is None:
        n_chars = []
        for b in token_bytes:
            try:
                n_chars.append(len(b.decode("utf-8")))
            except UnicodeDecodeError:
                n_chars.append(None)
    completed = [0] * len(token_bytes)  # per token, the characters credited to it
    parts: list[str] = []
    decoder, stretch_start = None, 0
    for k, (b, count) in enumerate(zip(token_bytes, n_chars)):
        if decoder is None:
            if count is not None:
                completed[k] = count
                parts.append(b.decode("utf-8"))
                continue
            decoder, stretch_start = codecs.getincrementaldecoder("utf-8")(errors="replace"), k
        decoder.decode(b)
        if not decoder.getstate()[0]:  # nothing pending: the stretch ends with this token
            parts.append(_credit_stretch(token_bytes[stretch_start : k + 1], stretch_start, completed))
            decoder = None
    if decoder is not None:  # an unfinished character at the very end
        parts.append(_credit_stretch(token_bytes[stretch_start:], stretch_start, completed))
    return "".join(parts), list(itertools.accumulate(completed))


def _fast_byte_level(table: tuple[list, list, np.ndarray], ids: list[int]) -> tuple[str, list[int]] | None:
    token_bytes, n_chars, _ = table
    vocab = len(token_bytes)
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        return None
    pieces = [token_bytes[i] for i in ids]
    if None in pieces:
        return None
    counts = [n_chars[i] for i in ids]
    if None not in counts:  # every token is whole characters (the usual case): ends are a running sum
        return b"".join(pieces).decode("utf-8"), list(itertools.accumulate(counts))
    return _ends_byte_level(pieces, counts)


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


def _whole_token_rows(table: tuple[list, list, np.ndarray], rows: list[list[int]], texts: list[str]) -> dict[int, list[int]]:
    """The byte-level fast path for a whole batch at once: char ends of every row whose tokens all hold
    whole characters (the usual case), as ``{row: ends}``; other rows are left to the per-row routes.

    Exactness check for the batch: the rows' bytes, joined and decoded, must equal their texts joined,
    and each row's character count its text's length (then every row's text is its own slice)."""
    token_bytes, _, n_chars_array = table
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))  # (B,)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))  # (N,)
    if flat.size and (flat.min() < 0 or flat.max() >= len(n_chars_array)):
        return {}
    counts = n_chars_array[flat]  # (N,) characters per token, -1 for a partial or unknown token
    row_of_token = np.repeat(np.arange(len(rows)), lengths)  # (N,)
    bad_rows = np.zeros(len(rows), dtype=bool)
    bad_rows[row_of_token[counts < 0]] = True
    good = np.flatnonzero(~bad_rows)
    if not good.size:
        return {}
    good_tokens = ~bad_rows[row_of_token]  # (N,)
    char_totals = np.bincount(row_of_token, weights=np.maximum(counts, 0), minlength=len(rows)).astype(np.int64)  # (B,)
    good_texts = [texts[b] for b in good.tolist()]
    if char_totals[good].tolist() != [len(t) for t in good_texts]:
        return {}
    joined = b"".join([token_bytes[i] for i in flat[good_tokens].tolist()])
    if joined.decode("utf-8", errors="replace") != "".join(good_texts):
        return {}
    # Ends: a running character count over all good tokens, minus the count before each row.
    running = np.cumsum(counts[good_tokens])  # (N_good,)
    good_lengths = lengths[good]
    row_starts = np.concatenate(([0], np.cumsum(good_lengths)[:-1]))  # (B_good,) first token of each row
    before_row = np.concatenate(([0], np.cumsum(char_totals[good])[:-1]))  # (B_good,) chars in earlier rows
    all_ends = (running - np.repeat(before_row, good_lengths)).tolist()
    return {b: all_ends[start:start + n] for b, start, n in zip(good.tolist(), row_starts.tolist(), good_lengths.tolist())}


def decode_with_offsets(tokenizer, response_ids) -> list[DecodedResponse]:
    """Decode generated responses and give each token's char end (see the module docstring).

    ``response_ids``: per response, the generated ids (a list of int lists, or a (B, T) tensor / array);
    an EOS and anything after it (padding) may be included. The text is ``tokenizer.decode(ids up to the
    first EOS, skip_special_tokens=True, clean_up_tokenization_spaces=False)``: what the reward models must
    judge. Tokens from the first EOS on add no text and get the final end. Returns one
    ``DecodedResponse`` per response with ``len(token_ends) == len(ids)``."""
    if hasattr(response_ids, "tolist"):
        response_ids = response_ids.tolist()
    eos = tokenizer.eos_token_id
    kept = []
    for ids in response_ids:
        ids = list(map(int, ids))
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos) + 1]
        kept.append(ids)
    texts = _decode_many(tokenizer, kept)
    table = _byte_table(tokenizer) if _is_byte_level(tokenizer) else None
    batch_ends = _whole_token_rows(table, kept, texts) if table is not None else {}
    results = []
    for b, (ids, full, text) in enumerate(zip(kept, response_ids, texts)):
        ends = batch_ends.get(b)
        if ends is None and table is not None:
            fast = _fast_byte_level(table, ids)
            ends = fast[1] if fast is not None and fast[0] == text else None  # exactness check
        elif ends is None:
            ends = _fast_metaspace(tokenizer, ids, text)
        if ends is None:  # the slow, always-right route
            ends = _ends_by_prefix(tokenizer, ids, text)
        if len(full) > len(ids):
            ends = ends + [ends[-1] if ends else 0] * (len(full) - len(ids))
        results.append(DecodedResponse(text, ends))
    return results


def place_rewards(breakdown: RewardBreakdown, decoded: list[DecodedResponse], response_mask: torch.Tensor) -> torch.Tensor:
    """Per-category token rewards (B, T, K) float32, K in ``breakdown.names`` order, on ``response_mask``'s device.

    ``decoded``: B ``DecodedResponse`` (only ``token_ends`` is read); ``response_mask`` (B, T): True for
    real response tokens (up to and including EOS), left-aligned. Span categories: each segment's reward
    on the first token whose char end reaches the segment's end (a segment ending past the text lands
    on the last real token); sequence categories: the sample's rewards summed on its last real token.
    Samples without real tokens get nothing."""
    B, T = response_mask.shape
    K = len(breakdown.names)
    if len(decoded) != B:
        raise ValueError(f"{len(decoded)} decoded responses for a response mask of {B} rows")
    out = np.zeros((B, T, K), dtype=np.float32)
    lengths = response_mask.sum(-1).cpu().numpy().astype(np.int64)  # (B,)
    last = np.maximum(lengths - 1, 0)  # (B,) index of the last real token
    has_tokens = lengths > 0
    # Every row's char ends in one flat sorted array, so that one searchsorted serves all segments: row b's
    # values are shifted by b * stride and its padding holds the row's largest possible key, which keeps
    # the array non-decreasing across rows; a query then lands inside its own row.
    kept = np.array([min(len(d.token_ends), T) for d in decoded], dtype=np.int64)  # (B,)
    flat_ends = np.fromiter(itertools.chain.from_iterable(d.token_ends[:T] for d in decoded), dtype=np.int64, count=int(kept.sum()))
    span_categories = [c for c in breakdown.categories.values() if c.granularity != "sequence"]
    max_query = max((end for c in span_categories for segs in c.segments for _, end in segs), default=0)
    stride = max(int(flat_ends.max(initial=0)), max_query) + 1  # every end and query is < stride
    ends = np.full((B, T), stride - 1, dtype=np.int64)  # (B, T); padding never precedes a real end
    ends[np.arange(T) < kept[:, None]] = flat_ends
    keys = (ends + np.arange(B, dtype=np.int64)[:, None] * stride).reshape(-1)  # (B * T,) non-decreasing
    for k, category in enumerate(breakdown.categories.values()):
        if category.granularity == "sequence":
            totals = np.array([sum(r) for r in category.rewards], dtype=np.float64)  # (B,)
            rows = np.flatnonzero(has_tokens)
            out[rows, last[rows], k] += totals[rows]
            continue
        counts = np.fromiter((len(s) for s in category.segments), dtype=np.int64, count=B)  # (B,)
        n_segments = int(counts.sum())
        if not n_segments:
            continue
        rows = np.repeat(np.arange(B, dtype=np.int64), counts)  # (S,)
        seg_ends = np.fromiter((end for segs in category.segments for _, end in segs), dtype=np.int64, count=n_segments)
        values = np.fromiter(itertools.chain.from_iterable(category.rewards), dtype=np.float64, count=n_segments)
        positions = np.searchsorted(keys, seg_ends + rows * stride, side="left") - rows * T  # first k with end >= query
        positions = np.minimum(positions, last[rows])
        real = has_tokens[rows]
        np.add.at(out[:, :, k], (rows[real], positions[real]), values[real])  # accumulate: segments may share a token
    return torch.from_numpy(out).to(response_mask.device)
