"""Numbers spoken as English words, for TTS vocabularies without digits (MMS-TTS): "object
number 0" → "object number zero", "3.5%" → "three point five percent", "21st" → "twenty first".

Deliberately small and deterministic (it enters the cache key as ``numbers-v1``): integers up
to trillions (with or without thousands commas), decimals read digit by digit, ordinals
(1st, 2nd, 3rd, 4th…) and a percent sign after a number. Anything else is left as it was.
"""

from __future__ import annotations

import re

NORMALIZERS = {"none": None, "numbers": "numbers-v1"}

_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth",
            "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}  # fmt: skip
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(\s?%)?")


def say_integer(n: int) -> str:
    """``n`` (0 <= n < 10**15) in words: 1234 -> "one thousand two hundred thirty four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f" {_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + (f" {say_integer(rest)}" if rest else "")
    for size, name in _SCALES:
        if n >= size:
            rest = n % size
            return f"{say_integer(n // size)} {name}" + (f" {say_integer(rest)}" if rest else "")
    raise ValueError(n)


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


def _spoken(match: re.Match) -> str:
    whole, fraction, suffix, percent = match.groups()
    digits = whole.replace(",", "")
    if len(digits) > 15:
        return match.group(0)  # too long to be a quantity; leave it to the vocabulary check
    words = say_integer(int(digits))
    if suffix and not fraction:
        words = _ordinal(words)
    elif suffix:
        words += f" point {' '.join(_ONES[int(d)] for d in fraction)} {suffix}"
    elif fraction:
        words += f" point {' '.join(_ONES[int(d)] for d in fraction)}"
    return words + (" percent" if percent else "")


def normalize_numbers(text: str) -> str:
    """``text`` with every number spoken as words."""
    return _NUMBER.sub(_spoken, text) if isinstance(text, str) else text
