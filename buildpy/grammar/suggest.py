"""Did-you-mean suggestions for unknown names (instructions, flags, stages, mount keys)."""

from __future__ import annotations

from collections.abc import Iterable


def closest(word: str, options: Iterable[str], *, case_sensitive: bool = False) -> str | None:
    """The option nearest to `word` by edit distance, if near enough to be a likely typo."""
    key = word if case_sensitive else word.lower()
    best, best_distance = None, None
    for option in sorted(set(options)):
        distance = _levenshtein(key, option if case_sensitive else option.lower())
        if best_distance is None or distance < best_distance:
            best, best_distance = option, distance
    if best is None or best_distance is None:
        return None
    # BuildKit's rule of thumb: a third of the word may be wrong, and never all of it
    if best_distance == 0 or best_distance > max(1, len(word) // 3) + (1 if len(word) > 3 else 0):
        return None if best_distance else best
    return best


def did_you_mean(word: str, options: Iterable[str], *, case_sensitive: bool = False) -> str:
    """" (did you mean X?)" when an option is close to `word`, else ""."""
    match = closest(word, options, case_sensitive=case_sensitive)
    return f" (did you mean {match}?)" if match is not None and match != word else ""


def _levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
