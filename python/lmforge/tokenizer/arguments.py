"""Reading the flexible arguments of the `Tokenizer` API: training inputs (a path, a list of
paths, or texts) and tiktoken's special-token keywords."""

from __future__ import annotations

import os
from collections.abc import Collection
from collections.abc import Set as AbstractSet


def special_sets(
    names: set[str],
    allowed_special: AbstractSet[str] | str,
    disallowed_special: AbstractSet[str] | Collection[str] | str,
) -> tuple[list[str] | None, list[str]]:
    """tiktoken's keyword semantics over the special tokens ``names``: returns the allowed names
    (None for all of them) and the disallowed names.

    Raises:
        ValueError: a keyword is neither ``"all"`` nor a collection, or names unknown tokens.
    """
    if allowed_special == "all":
        allowed = names
    elif isinstance(allowed_special, str):
        raise ValueError('allowed_special must be "all" or a set of special tokens')
    else:
        allowed = set(allowed_special)
    if disallowed_special == "all":
        disallowed = names - allowed
    elif isinstance(disallowed_special, str):
        raise ValueError('disallowed_special must be "all" or a set of special tokens')
    else:
        disallowed = set(disallowed_special)
    unknown = (allowed | disallowed) - names
    if unknown:
        raise ValueError(
            f"{sorted(unknown)} are not special tokens of this tokenizer (it has {sorted(names)})"
        )
    return (None if allowed == names else sorted(allowed)), sorted(disallowed)


def as_paths(inputs: object) -> list[str] | None:
    """The list of paths named by ``inputs``, or None when it is an iterable of texts."""
    if isinstance(inputs, (str, os.PathLike)):
        items: list[object] = [inputs]
    elif isinstance(inputs, (list, tuple)):
        items = list(inputs)
    else:
        return None
    paths = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"inputs must be a path, a list of paths or an iterable of str; got a list "
                f"holding {type(item).__name__}"
            )
        path = os.fspath(item)
        if not os.path.exists(path) and ("\n" in path or " " in path or len(path) > 255):
            raise FileNotFoundError(
                f"{path[:60]!r}...: no such file. A list or tuple is read as file paths; to "
                "train on texts held in a list, pass iter(texts)."
            )
        paths.append(path)
    if not paths:
        raise ValueError("inputs is empty: give at least one file")
    return paths
