"""Findings of absence: "No pleural effusion.", "Lungs are clear.", "Without focal lesion."

A report states what is there and what is not. A finding of absence must not become a segment
(the model cannot answer "nothing" reliably: the demo model drew about a hundred voxels for
"No focal lesion."), so the splitter marks such findings negative and the engine lists them
without running the model on them.

A finding is negative when, after lower-casing:

- it starts with a negation cue (``no``, ``none``, ``without``, ``absence of``, ``negative for``,
  ``free of``, ``there is/are no``, ``no evidence of``, ``not seen``, ...);
- it ends by denying its subject (``... is not seen``, ``... are absent``, ``... ruled out``,
  ``... not identified``); or
- it is a normal statement (``lungs are clear``, ``clear lungs``, ``unremarkable``,
  ``normal study``, ``within normal limits``, ``no abnormality``).

"Nodule without calcification" stays positive: ``without`` only negates a finding it starts.
:func:`split_negated_clauses` cuts ``"A nodule in the left upper lobe, no effusion."`` (and
``"No nodule on the left, but a nodule on the right."``) into its positive and negative parts, so
that mixed sentences segment the positive part only.
"""

from __future__ import annotations

import re

_CUES = (
    r"no",
    r"none",
    r"nil",
    r"without",
    r"absence of",
    r"absent",
    r"negative for",
    r"free of",
    r"not seen",
    r"not identified",
    r"no evidence of",
    r"no sign of",
    r"no signs of",
    r"there (?:is|are|was|were) no",
    r"(?:we )?(?:do|did) not see",
    r"(?:was|were|is|are) not (?:seen|identified|detected|present)",
)
_LEADING = re.compile(r"^(?:(?:findings|impression|conclusion)\s*:\s*)?(?:" + "|".join(_CUES) + r")\b")
_TRAILING = re.compile(
    r"\b(?:(?:is|are|was|were)\s+)?(?:not\s+(?:seen|identified|detected|present|demonstrated|visible)|absent|ruled out|excluded)\s*[.!]?$"
)
_NORMAL = re.compile(
    r"^(?:(?:the\s+)?(?:lungs?|chest|liver|kidneys?|brain|breasts?|prostate|study|scan|examination|exam)\s+"
    r"(?:is|are|was|were|appears?|remains?)\s+(?:(?:otherwise|essentially|entirely)\s+)*(?:clear|normal|unremarkable|within normal limits)"
    r"|clear lungs?|normal (?:study|scan|examination|exam|chest|findings)|unremarkable(?: study| scan| examination)?"
    r"|no (?:acute )?abnormalit(?:y|ies)(?: detected| seen)?|within normal limits|nad)\b"
)
_CLAUSE_BREAK = re.compile(
    r"(?:,\s*|\s+)(?:but|however|whereas)\s+"
    r"|(?:,|\band\b)\s+(?=(?:no|without|there (?:is|are) no|absence of|negative for)\b)",
    re.IGNORECASE,
)


def is_negative(text: str) -> bool:
    """True for a finding that states an absence or a normal result (see the module docstring)."""
    plain = re.sub(r"\s+", " ", text.strip().lower()).strip(" .;:!")
    plain = re.sub(r"^\d{1,2}[.)]\s+|^[-*\u2022]\s+", "", plain)
    if not plain:
        return False
    return bool(_LEADING.match(plain) or _NORMAL.match(plain) or _TRAILING.search(plain))


def split_negated_clauses(item: str) -> list[str]:
    """``"A nodule in the left upper lobe, no effusion."`` -> ``["A nodule in the left upper lobe.", "No effusion."]``.

    Cuts an item before a comma or "and" that starts a negated clause, and at "but", "however" or
    "whereas" ("No nodule on the left, but a 5 mm nodule in the right upper lobe."), only when the
    parts differ in polarity; otherwise (all negative, all positive, nothing to cut) returns ``[item]``.
    """
    parts = [part.strip(" ,;") for part in _CLAUSE_BREAK.split(item) if part.strip(" ,;.")]
    if len(parts) < 2 or len({is_negative(part) for part in parts}) < 2:
        return [item]
    return [_sentence(part) for part in parts]


def _sentence(part: str) -> str:
    part = part.rstrip(" .")
    return f"{part[0].upper()}{part[1:]}."
