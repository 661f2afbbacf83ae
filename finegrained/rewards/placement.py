"""Where a segment's reward lands: from char spans judged on text back to the policy's own tokens.

The reward models judge text; the policy generated token ids. The bridge is each generated token's
character range in the decoded response, computed from the generated ids themselves, never by
re-tokenising the text (sampled id sequences are often not what the tokenizer would produce).

``decode_with_offsets`` gives, for every generated token, ``token_ends[k]``: the exclusive end, in the
decoded text, of the last character that token completes. A token that completes no character (the
first bytes of a multi-byte character, a special token) gets the end of the previous one. Two routes:

- byte-level BPE (GPT-2 style): every token is a known byte string, so a UTF-8 incremental decoder fed
  token by token counts exactly the characters each token completes. The result is checked against
  ``tokenizer.decode``; a response where they differ takes the second route;
- any other tokenizer (SentencePiece, WordPiece): prefix decoding, ``ends[k]`` = the length of the
  longest common prefix of ``decode(ids[:k + 1])`` and the full text (quadratic per response, so used
  only where the first route does not apply).

``place_rewards`` puts each segment's reward on the token that completes the segment's last non-space
character (segments are trimmed, so that is the first token with ``token_ends >= segment end``) and each
sequence-level reward on the last real token of the response (its EOS when it has one).
"""

from __future__ import annotations

import codecs
import functools
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


def _token_bytes(tokenizer, ids: list[int]) -> list[bytes] | None:
    """Byte string of each token of a byte-level tokenizer (special tokens: b""); None if unknown."""
    table = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for i, piece in zip(ids, pieces):
        if i in special:
            out.append(b"")
            continue
        if piece is None:
            return None
        try:
            out.append(bytes(table[c] for c in piece))
        except KeyError:  # an added (non byte-level) token: let the general route handle the response
            return None
    return out


def _ends_byte_level(token_bytes: list[bytes]) -> tuple[str, list[int]]:
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


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


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

    ``response_ids``: per response, the generated ids (an EOS and anything after it may be included;
    special tokens add no text). Returns one ``DecodedResponse`` per response with
    ``len(token_ends) == len(ids)``."""
    byte_level = _is_byte_level(tokenizer)
    results = []
    for ids in response_ids:
        ids = list(ids)
        text = _decode(tokenizer, ids)
        if byte_level:
            token_bytes = _token_bytes(tokenizer, ids)
            if token_bytes is not None:
                fast_text, ends = _ends_byte_level(token_bytes)
                if fast_text == text:
                    results.append(DecodedResponse(text, ends))
                    continue
        results.append(DecodedResponse(text, _ends_by_prefix(tokenizer, ids, text)))
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
    ends = torch.full((B, T), big, dtype=torch.int64)
    for b, d in enumerate(decoded):
        n = min(len(d.token_ends), T)
        if n:
            ends[b, :n] = torch.tensor(d.token_ends[:n], dtype=torch.int64)
    last = torch.tensor([max(n - 1, 0) for n in lengths], dtype=torch.int64)  # (B,)
    has_tokens = torch.tensor([n > 0 for n in lengths])
    for k, category in enumerate(breakdown.categories.values()):
        if category.granularity == "sequence":
            totals = torch.tensor([float(sum(r)) for r in category.rewards])  # (B,)
            out[torch.arange(B)[has_tokens], last[has_tokens], k] += totals[has_tokens]
            continue
        rows, seg_ends, values = [], [], []
        for b, (segments, rewards) in enumerate(zip(category.segments, category.rewards)):
            if lengths[b] == 0:
                continue
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
