"""A small, deliberately naive pure-Python byte-level BPE: the oracle for lmforge's trainer.

Readability over speed: every merge recounts every pair. Use it on corpora of a few KB.

Training semantics (the spec of lmforge's trainer):

* Each item of ``texts`` is a separate document; pretokens never cross items.
* Each text is split on every special token (the longest special wins where several match at the
  same position); special-token text is never counted.
* Each remaining piece is pretokenized with ``regex.findall(pattern, piece)``; each pretoken is
  encoded to UTF-8 and counted.
* The vocab starts with ids 0..255 = the single bytes. Each merge takes the most frequent adjacent
  pair (weighted by pretoken frequency; overlapping pairs such as the two ``aa`` in ``aaa`` both
  count), ties broken by the lexicographically greatest ``(left bytes, right bytes)``, and is
  applied to every word left to right, non-overlapping. Merge ``i`` gets id ``256 + i``.
* Training stops when ``256 + len(merges) + len(special_tokens) == vocab_size`` or when no pair
  occurs any more. The special tokens then get the next ids, in the order given.

Encoding uses the tiktoken rule: within a pretoken, repeatedly merge the adjacent pair whose
concatenated bytes is the token of lowest rank (rank = merge index), leftmost on ties.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import regex

# The published pretokenization regexes (identical to rust/pretokenize/mod.rs).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
CL100K_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
O200K_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "o200k": O200K_PATTERN}


def split_on_specials(text: str, special_tokens) -> list[tuple[str, bool]]:
    """Cut ``text`` into ``(piece, is_special)`` parts; the longest special wins at a position.

    The regex alternation tries the specials longest first, so at any position the longest
    matching special is taken; scanning is left to right (the leftmost match wins first).
    Empty ordinary pieces are dropped.
    """
    specials = sorted(set(special_tokens), key=len, reverse=True)
    if not specials:
        return [(text, False)] if text else []
    splitter = "(" + "|".join(regex.escape(s) for s in specials) + ")"
    parts = regex.split(splitter, text)
    # With one capturing group, regex.split alternates: text, special, text, special, ..., text.
    result = []
    for i, part in enumerate(parts):
        is_special = i % 2 == 1
        if is_special or part:
            result.append((part, is_special))
    return result


def pretokenize(texts: list[str], special_tokens, pattern: str) -> Counter[bytes]:
    """Count the UTF-8 pretokens of all texts, skipping special-token text."""
    counts: Counter[bytes] = Counter()
    for text in texts:
        for piece, is_special in split_on_specials(text, special_tokens):
            if not is_special:
                for pretoken in regex.findall(pattern, piece):
                    counts[pretoken.encode("utf-8")] += 1
    return counts


def count_pairs(words: dict[tuple[int, ...], int]) -> Counter[tuple[int, int]]:
    """Count every adjacent pair of every word, weighted by the word's frequency."""
    pairs: Counter[tuple[int, int]] = Counter()
    for word, freq in words.items():
        for left, right in pairwise(word):
            pairs[(left, right)] += freq
    return pairs


def apply_merge(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """Replace each ``pair`` in ``word`` by ``new_id``, left to right, non-overlapping."""
    out = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_reference(
    texts: list[str], vocab_size: int, special_tokens: list[str], pattern: str = GPT2_PATTERN
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE; return ``(vocab id -> bytes, merges as (left bytes, right bytes))``.

    Special tokens are in the vocab (UTF-8 encoded) after the merges, in the order given.
    """
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"duplicate special tokens: {special_tokens}")
    if any(s == "" for s in special_tokens):
        raise ValueError("a special token is empty")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special_tokens)} specials")

    vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    # A word is a pretoken as a tuple of token ids; start with one id per byte.
    pretokens = pretokenize(texts, special_tokens, pattern)
    words = {tuple(pretoken): freq for pretoken, freq in pretokens.items()}
    merges: list[tuple[bytes, bytes]] = []

    while 256 + len(merges) + len(special_tokens) < vocab_size:
        pairs = count_pairs(words)
        if not pairs:
            break  # every word is a single token: the corpus ran out of pairs
        # Most frequent; ties -> lexicographically greatest (left bytes, right bytes); then, should
        # two different id pairs spell the same bytes, the greatest ids (never seen in practice).
        best = max(pairs, key=lambda p: (pairs[p], vocab[p[0]], vocab[p[1]], p))
        new_id = 256 + len(merges)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merges.append((vocab[best[0]], vocab[best[1]]))
        merged: dict[tuple[int, ...], int] = {}
        for word, freq in words.items():
            new_word = apply_merge(word, best, new_id)
            merged[new_word] = merged.get(new_word, 0) + freq
        words = merged

    for special in special_tokens:
        vocab[len(vocab)] = special.encode("utf-8")
    return vocab, merges


def bpe_pretoken(pretoken: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """Split one pretoken into tokens by the tiktoken rule (lowest-rank concatenation first)."""
    parts = [bytes([b]) for b in pretoken]
    while len(parts) > 1:
        best_rank, best_i = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            # Strictly lower: on equal ranks the leftmost pair stays chosen.
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def encode_reference(
    text: str,
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    special_tokens: dict[str, int],
    pattern: str = GPT2_PATTERN,
) -> list[int]:
    """Encode ``text`` to ids: specials (longest match) map to their ids, the rest is pretokenized
    and BPE'd per pretoken with rank = merge index."""
    ranks: dict[bytes, int] = {}
    for i, (left, right) in enumerate(merges):
        ranks.setdefault(left + right, i)
    # bytes -> id over the ordinary vocab (lowest id where two ids spell the same bytes).
    special_ids = set(special_tokens.values())
    token_id: dict[bytes, int] = {}
    for i in sorted(vocab):
        if i not in special_ids:
            token_id.setdefault(vocab[i], i)

    ids: list[int] = []
    for piece, is_special in split_on_specials(text, special_tokens):
        if is_special:
            ids.append(special_tokens[piece])
            continue
        for pretoken in regex.findall(pattern, piece):
            ids.extend(token_id[t] for t in bpe_pretoken(pretoken.encode("utf-8"), ranks))
    return ids


def decode_reference(ids: list[int], vocab: dict[int, bytes]) -> str:
    """Concatenate the tokens' bytes and decode as UTF-8 (invalid sequences replaced)."""
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
