"""Coded terminology of a finding: category, type, anatomic region and laterality in SNOMED CT.

The words of a finding are looked up in the vocabulary table :mod:`tmca.vocabulary` (see
``docs/TERMINOLOGY.md`` for its format and how to extend it): the first type whose word occurs in
the text, the first region whose pattern matches, and the side the text names (``bilateral`` or
``both``, or ``left`` and ``right`` together, is bilateral). A text with no known type word gets the
table's generic fallback type (``generic: true``); its name stays the finding's own text.

The same coding goes into the Slicer segmentation (:meth:`Terminology.slicer_entry`, the
``TerminologyEntry`` segment tag), the DICOM SEG and the JSON outputs (:meth:`Terminology.as_dict`).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmca.errors import TMCAError

VOCABULARY_FORMAT = "tmca-vocabulary-1"


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator (``SCT``), code value and code meaning."""

    scheme: str
    value: str
    meaning: str

    def slicer(self) -> str:
        """``"SCT^27925004^Nodule"``, as Slicer serialises a code."""
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def as_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}


@dataclass(frozen=True)
class Terminology:
    """The coding of one finding; ``region`` and ``laterality`` are None when the text names none."""

    category: Code
    type: Code
    region: Code | None
    laterality: Code | None
    generic: bool
    type_context: str
    anatomic_context: str

    def slicer_entry(self) -> str:
        """Slicer's ``TerminologyEntry`` tag value: ``context~category~type~typeModifier~anatomicContext~region~regionModifier``,
        each code ``scheme^value^meaning`` and an absent one ``^^`` (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry)."""
        empty = "^^"
        parts = [
            self.type_context,
            self.category.slicer(),
            self.type.slicer(),
            empty,
            self.anatomic_context,
            self.region.slicer() if self.region else empty,
            self.laterality.slicer() if self.laterality and self.region else empty,
        ]
        return "~".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (with the Slicer tag value, so that callers can set it as is)."""
        return {
            "category": self.category.as_dict(),
            "type": self.type.as_dict(),
            "region": self.region.as_dict() if self.region else None,
            "laterality": self.laterality.as_dict() if self.laterality else None,
            "generic": self.generic,
            "slicer_terminology_entry": self.slicer_entry(),
        }


@dataclass(frozen=True)
class _TypeEntry:
    words: tuple[str, ...]
    category: Code
    code: Code


@dataclass(frozen=True)
class _RegionEntry:
    patterns: tuple[re.Pattern[str], ...]
    code: Code
    laterality: str | None


@dataclass(frozen=True)
class Vocabulary:
    """The parsed vocabulary table."""

    type_context: str
    anatomic_context: str
    types: tuple[_TypeEntry, ...]
    fallback: _TypeEntry
    regions: tuple[_RegionEntry, ...]
    lateralities: dict[str, Code]


def code_finding(text: str, vocabulary: Vocabulary | None = None) -> Terminology:
    """The :class:`Terminology` of a finding's text (the bundled vocabulary unless one is given)."""
    vocabulary = vocabulary or load_vocabulary()
    plain = _plain(text)
    entry = next((t for t in vocabulary.types if any(_has_word(plain, word) for word in t.words)), None)
    region = next((r for r in vocabulary.regions if any(p.search(plain) for p in r.patterns)), None)
    side = stated_laterality(plain) or (region.laterality if region else None)
    chosen = entry or vocabulary.fallback
    return Terminology(
        category=chosen.category,
        type=chosen.code,
        region=region.code if region else None,
        laterality=vocabulary.lateralities.get(side) if side else None,
        generic=entry is None,
        type_context=vocabulary.type_context,
        anatomic_context=vocabulary.anatomic_context,
    )


def stated_laterality(text: str) -> str | None:
    """``"left"``, ``"right"``, ``"bilateral"`` or None from the side words of ``text``."""
    plain = _plain(text)
    if re.search(r"\b(?:bilateral|bilaterally|both)\b", plain):
        return "bilateral"
    left, right = re.search(r"\bleft\b", plain), re.search(r"\bright\b", plain)
    if left and right:
        return "bilateral"
    return "left" if left else "right" if right else None


@functools.lru_cache(maxsize=4)
def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """The bundled table (:data:`tmca.vocabulary.VOCABULARY`), or a JSON file of the same structure.

    Raises ``TMCAError`` naming the problem when the table is unreadable or malformed.
    """
    if path is None:
        from tmca.vocabulary import VOCABULARY

        return parse_vocabulary(VOCABULARY, "tmca.vocabulary")
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TMCAError(f"cannot read vocabulary {path}: {error}") from None
    return parse_vocabulary(table, str(path))


def parse_vocabulary(table: dict[str, Any], origin: str) -> Vocabulary:
    """Check and compile a vocabulary table (see docs/TERMINOLOGY.md); ``origin`` names it in errors."""
    path = origin
    try:
        if table.get("format") != VOCABULARY_FORMAT:
            raise ValueError(f"format must be {VOCABULARY_FORMAT!r}")
        categories = {name: _code(value) for name, value in table["categories"].items()}
        types = tuple(_type_entry(item, categories) for item in table["types"])
        regions = tuple(
            _RegionEntry(tuple(re.compile(p) for p in item["patterns"]), _code(item["code"]), item.get("laterality"))
            for item in table["regions"]
        )
        lateralities = {side: _code(value) for side, value in table["lateralities"].items()}
        return Vocabulary(
            str(table["type_context"]), str(table["anatomic_context"]), types,
            _type_entry({"words": [], **table["fallback_type"]}, categories), regions, lateralities,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, re.error) as error:
        raise TMCAError(f"vocabulary {path} is malformed ({type(error).__name__}: {error}); see docs/TERMINOLOGY.md") from None


def _type_entry(item: dict[str, Any], categories: dict[str, Code]) -> _TypeEntry:
    if item["category"] not in categories:
        raise ValueError(f"unknown category {item['category']!r}")
    return _TypeEntry(tuple(str(word).lower() for word in item["words"]), categories[item["category"]], _code(item["code"]))


def _code(value: list[str]) -> Code:
    scheme, code, meaning = (str(part) for part in value)
    if not scheme or not code or not meaning or any(c in part for part in (scheme, code, meaning) for c in "~^|"):
        raise ValueError(f"code {value!r} needs a scheme, a value and a meaning, none holding ~, ^ or |")
    return Code(scheme, code, meaning)


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace("-", " ")).strip()


def _has_word(plain: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word.replace("-", " ")) + r"\b", plain) is not None
