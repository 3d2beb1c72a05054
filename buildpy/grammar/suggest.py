"""Did-you-mean suggestions for unknown names (instructions, flags, stages, mount keys).

BuildKit's rule: the nearest option at most two edits away, written in the case the user
wrote (`form` → `from`, `RUNN` → `RUN`); none when the word is itself an option.
"""

from __future__ import annotations

from collections.abc import Iterable


def closest(word: str, options: Iterable[str], *, case_sensitive: bool = False) -> str | None:
    """The option nearest to `word` within two edits, in the user's case; None if none is."""
    key = word if case_sensitive else word.lower()
    match, best = None, 3
    for option in sorted(set(options)):
        candidate = option if case_sensitive else option.lower()
        if candidate == key:
            return None  # the word is valid: the mistake is elsewhere
        distance = _levenshtein(key, candidate)
        if distance < best:
            match, best = (candidate if case_sensitive else _match_case(candidate, word)), distance
    return match


def did_you_mean(word: str, options: Iterable[str], *, case_sensitive: bool = False) -> str:
    """" (did you mean X?)" when an option is close to `word`, else ""."""
    match = closest(word, options, case_sensitive=case_sensitive)
    return f" (did you mean {match}?)" if match else ""


def _match_case(option: str, typed: str) -> str:
    if typed == typed.lower():
        return option.lower()
    if typed == typed.upper():
        return option.upper()
    return option


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
