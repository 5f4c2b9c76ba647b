"""Checks of the pure-Python reference BPE itself, on corpora small enough to work out by hand.

No lmforge here: the reference is the oracle lmforge's trainer is compared against, so it is
checked independently (hand-derived merges, and tiktoken for encoding).
"""

import pytest
import tiktoken

from reference_bpe import (
    CL100K_PATTERN,
    GPT2_PATTERN,
    O200K_PATTERN,
    decode_reference,
    encode_reference,
    train_reference,
)

EOT = "<|endoftext|>"


def merges_of(texts, vocab_size=1000, specials=(), pattern=GPT2_PATTERN):
    return train_reference(list(texts), vocab_size, list(specials), pattern)[1]


def specials_of(vocab, specials):
    """The special-token map of a trained vocab: the last len(specials) ids, in order."""
    first = len(vocab) - len(specials)
    return {s: first + i for i, s in enumerate(specials)}


# --- training -------------------------------------------------------------------------------


def test_tie_left_byte_decides():
    # Pretokens "ab" and "cd" (separate documents), each once: (a,b)=1, (c,d)=1, a tie.
    # The greatest pair as (left bytes, right bytes) is (c,d) since b"c" > b"a".
    # Then (a,b) is the only pair left; then every word is one token: out of pairs.
    assert merges_of(["ab", "cd"]) == [(b"c", b"d"), (b"a", b"b")]


def test_tie_right_byte_decides():
    # (a,b)=1, (a,c)=1: the left bytes are equal, so the right decides: b"c" > b"b".
    assert merges_of(["ab", "ac"]) == [(b"a", b"c"), (b"a", b"b")]


def test_tie_compares_bytes_not_ids():
    # Pretokens "ab" x2, "abc", "bc": (a,b)=3, (b,c)=2 -> merge (a,b) = id 256.
    # Words: (ab), (ab), (ab,c), (b,c): (ab,c)=1 and (b,c)=1 tie. As bytes b"b" > b"ab"
    # (b"b" > b"a" at the first byte), although id 256 > id 98: (b,c) wins.
    # Words: (ab), (ab), (ab,c), (bc): (ab,c) is the last pair.
    assert merges_of(["ab", "ab", "abc", "bc"]) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")]


def test_overlapping_pairs_count_twice_and_merge_left_to_right():
    # "aaa" holds (a,a) twice (overlapping, both counted); "zy" holds (z,y) once.
    # So (a,a)=2 beats (z,y)=1 (counting non-overlapping it would be a 1:1 tie won by z).
    # Applied left to right, "aaa" becomes (aa, a), not (a, aa).
    # Then (aa,a)=1 ties (z,y)=1; b"z" > b"aa", so (z,y); then (aa,a).
    assert merges_of(["aaa", "zy"]) == [(b"a", b"a"), (b"z", b"y"), (b"aa", b"a")]


def test_run_of_four_merges_non_overlapping():
    # "aaaa": (a,a)=3 -> merge; left to right, non-overlapping: (aa, aa); then (aa,aa).
    assert merges_of(["aaaa"]) == [(b"a", b"a"), (b"aa", b"aa")]


def test_frequency_weights_pairs():
    # Pretokens "ab" x3 and "zy" x2: (a,b)=3 beats the greater-but-rarer (z,y)=2.
    assert merges_of(["ab", "ab", "ab", "zy", "zy"]) == [(b"a", b"b"), (b"z", b"y")]


def test_pretoken_boundary_prevents_pair():
    # GPT-2 pattern: "ab ab" -> pretokens "ab", " ab" (the space starts a pretoken).
    # (a,b)=2, (" ",a)=1; the pair (b," ") never occurs. Then (" ", ab)=1.
    assert merges_of(["ab ab"]) == [(b"a", b"b"), (b" ", b"ab")]
    # "b b b" -> "b", " b", " b": only (" ",b)=2. Across the boundary (b," ") would also be 2
    # and would win the tie (b"b" > b" "); it must not exist. After one merge: out of pairs.
    assert merges_of(["b b b"]) == [(b" ", b"b")]


def test_documents_do_not_join():
    # Each item is its own document: "a" and "b" are single-byte words, no pair at all.
    vocab, merges = train_reference(["a", "b", "a", "b"], 300, [], GPT2_PATTERN)
    assert merges == [] and len(vocab) == 256


def test_special_tokens_are_not_counted():
    # "ab<|endoftext|>ab" splits into "ab", "ab": (a,b)=2 and nothing else. Had the special's
    # text been pretokenized ("<|", "endoftext", "|>") it would add (<,|), (|,>), (e,n), ...
    vocab, merges = train_reference(["ab<|endoftext|>ab"], 300, [EOT], GPT2_PATTERN)
    assert merges == [(b"a", b"b")]
    # 256 bytes, merge 256 = "ab", special 257 (ran out of pairs before vocab_size).
    assert len(vocab) == 258 and vocab[256] == b"ab" and vocab[257] == EOT.encode()
    # A special token separates pretokens too: "a" and "b" never pair.
    assert merges_of(["a<|endoftext|>b"], specials=[EOT]) == []


def test_overlapping_specials_longest_wins():
    # Specials "ab" and "abc" both match at position 0 of "abcd"; the longest, "abc", wins
    # (although "ab" is given first), leaving "d": no pair. Had "ab" won, "cd" would give (c,d).
    vocab, merges = train_reference(["abcd"], 300, ["ab", "abc"], GPT2_PATTERN)
    assert merges == []
    # Specials get the ids after the merges, in the order given.
    assert vocab[256] == b"ab" and vocab[257] == b"abc" and len(vocab) == 258


def test_stops_at_vocab_size():
    # "abcd": (a,b)=(b,c)=(c,d)=1, greatest left byte: (c,d). Then (a,b), (b,cd) tie: b > a.
    # vocab_size 259 = 256 bytes + 2 merges + 1 special: stop there, (a,b) never merged.
    vocab, merges = train_reference(["abcd"], 259, [EOT], GPT2_PATTERN)
    assert merges == [(b"c", b"d"), (b"b", b"cd")]
    assert len(vocab) == 259 and vocab[257] == b"bcd" and vocab[258] == EOT.encode()


def test_runs_out_of_pairs():
    # "ab" gives one merge; then no pair occurs, long before vocab_size 1000.
    vocab, merges = train_reference(["ab", "ab"], 1000, [EOT], GPT2_PATTERN)
    assert merges == [(b"a", b"b")] and len(vocab) == 258


def test_bad_arguments():
    with pytest.raises(ValueError):
        train_reference(["ab"], 300, [EOT, EOT], GPT2_PATTERN)
    with pytest.raises(ValueError):
        train_reference(["ab"], 256, [EOT], GPT2_PATTERN)


def test_utf8_bytes():
    # "éé": pretoken b"\xc3\xa9\xc3\xa9": (c3,a9)=2, (a9,c3)=1 -> (c3,a9); then (é,é).
    assert merges_of(["éé"]) == [(b"\xc3", b"\xa9"), (b"\xc3\xa9", b"\xc3\xa9")]


# --- encoding -------------------------------------------------------------------------------


def test_encode_lowest_rank_then_leftmost():
    vocab, merges = train_reference(["aaa", "zy"], 1000, [], GPT2_PATTERN)
    # Ranks: "aa"=0 (id 256), "zy"=1 (id 257), "aaa"=2 (id 258).
    assert vocab[256] == b"aa" and vocab[258] == b"aaa"
    # "aaaa": every adjacent pair is "aa" (rank 0): leftmost -> (aa,a,a). Then "aaa" (rank 2)
    # at 0 vs "aa" (rank 0) at 1: lowest rank -> (aa,aa). "aaaa" is no token: [256, 256].
    assert encode_reference("aaaa", vocab, merges, {}) == [256, 256]
    # "aaa" -> (aa,a) -> (aaa).
    assert encode_reference("aaa", vocab, merges, {}) == [258]
    # "zy aaa" -> pretokens "zy", " aaa"; " aaa" -> (" ",aa,a) -> (" ",aaa); " aaa" no token.
    assert encode_reference("zy aaa", vocab, merges, {}) == [257, 32, 258]


def test_encode_specials_and_boundaries():
    vocab, merges = train_reference(["ab<|endoftext|>ab"], 300, [EOT], GPT2_PATTERN)
    specials = specials_of(vocab, [EOT])
    assert specials == {EOT: 257}
    # "ab" -> 256; the special -> 257; "b" -> 98; " a" -> 32, 97 (" a" is no token).
    ids = encode_reference("ab<|endoftext|>b a", vocab, merges, specials)
    assert ids == [256, 257, 98, 32, 97]
    assert decode_reference(ids, vocab) == "ab<|endoftext|>b a"


def test_encode_overlapping_specials_longest_wins():
    vocab, merges = train_reference(["abcd"], 300, ["ab", "abc"], GPT2_PATTERN)
    specials = specials_of(vocab, ["ab", "abc"])
    # "abcdab": "abc" (257) wins at 0, then "d", then "ab" (256).
    assert encode_reference("abcdab", vocab, merges, specials) == [257, ord("d"), 256]


# --- cross-check against tiktoken --------------------------------------------------------------

CORPUS = [
    (
        "Once upon a time there was a little girl who lived in a village near the forest. "
        "Whenever she went out, the little girl wore a red riding cloak, so everyone in the "
        "village called her Little Red Riding Hood."
    ),
    (
        "One morning, Little Red Riding Hood asked her mother if she could go to visit her "
        "grandmother as it had been awhile since they'd seen each other.\n\n  That's a good "
        "idea, her mother said. 1234 apples, 56 pears; naïve café — déjà vu! 日本語のテキスト。"
    ),
    "The END.\r\n\tIt's 2024: we'll see, they're here, I'm 'quoted' ...   ",
]
PROBES = [
    "Once upon a time, Little Red Riding Hood went to visit her grandmother.",
    "  leading spaces and trailing   \n\n\nnewlines\r\n",
    "Numbers 1234567 and 3.14159, émigré naïveté, 日本語 😀 emoji",
    f"two docs{EOT}second one, she said{EOT}",
    "it's THEY'RE we'LL I'M",
]


@pytest.mark.parametrize(
    "pattern", [GPT2_PATTERN, CL100K_PATTERN, O200K_PATTERN], ids=["gpt2", "cl100k", "o200k"]
)
def test_encode_matches_tiktoken(pattern):
    specials = [EOT, "<|pad|>"]
    vocab, merges = train_reference(CORPUS, 256 + 150 + len(specials), specials, pattern)
    assert len(merges) == 150
    special_ids = specials_of(vocab, specials)
    ranks = {vocab[i]: i for i in range(256 + len(merges))}
    assert len(ranks) == 256 + len(merges)  # no two tokens spell the same bytes
    enc = tiktoken.Encoding(
        name="ref", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_ids
    )
    for text in CORPUS + PROBES:
        ids = encode_reference(text, vocab, merges, special_ids, pattern)
        assert ids == enc.encode(text, allowed_special="all"), text
        assert decode_reference(ids, vocab) == text
