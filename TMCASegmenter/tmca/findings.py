"""Report text: normalisation, splitting a report into findings, segment names and colours.

A report often describes several targets ("Bilateral pulmonary infection, two infected areas,
upper left lung and lower right lung."). The model is trained on whole reports and run once per
finding at inference, so :func:`split_findings` turns such a report into findings whose texts
each read like a single-target report ("Unilateral pulmonary infection, one infected area,
upper left lung."), and every finding becomes its own segment.

Splitting, in order (each step only applies when it yields two or more items):

1. a numbered list (``1. ... 2. ...``, ``1) ...``) or a bulleted list (lines starting ``-``,
   ``*``, ``•``);
2. semicolons, dropping a short list header such as ``"Two lesions:"``;
3. sentences;
4. within each item, the QaTa-COV19 pattern ``"[<laterality> <kind>,] <count> <noun>, <locations>"``
   (locations of zone and side words alone, as in ``"lower left and lower right lung"``, take the
   organ of the last location):
   one finding per location; when the stated count is larger than the number of locations,
   a location that names several lung zones is split (non-contiguous zones such as
   ``"upper lower right lung"`` first, then the location with the most zones loses its first
   zone) until the count is reached. The stated count is taken as the truth.

A report that does not split stays one finding with the whole (tidied) text: no text is dropped
except a list header.

Findings of absence ("No pleural effusion.", "Lungs are clear.") are kept with ``negative=True``
(see :mod:`tmca.negation`); a sentence that mixes both ("A nodule in the left upper lobe, no
effusion.") is cut into its positive and negative parts first.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass

from tmca.errors import TMCAError
from tmca.negation import is_negative, split_negated_clauses

MAX_NAME_LENGTH = 64

COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
ZONES = ("upper", "middle", "lower")  # cranio-caudal order; "all" covers the whole lung
SIDES = ("left", "right", "bilateral")
ZONE_TYPOS = {"midlle": "middle", "midle": "middle", "middel": "middle", "uper": "upper", "lowe": "lower"}

_PALETTE = (
    (0.90, 0.16, 0.16),  # red
    (0.20, 0.50, 0.90),  # blue
    (0.20, 0.75, 0.30),  # green
    (0.98, 0.60, 0.05),  # orange
    (0.65, 0.30, 0.85),  # purple
    (0.05, 0.80, 0.80),  # cyan
    (0.95, 0.45, 0.70),  # pink
    (0.85, 0.80, 0.10),  # yellow
    (0.55, 0.35, 0.20),  # brown
    (0.45, 0.85, 0.65),  # mint
)

_NUMBER_MARKER = re.compile(r"(?:^|(?<=\s))\(?(\d{1,2})[.)](?=\s)")
_BULLET_LINE = re.compile(r"^\s*[-*\u2022]\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATION_END = re.compile(r"\b(?:approx|e\.g|i\.e|vs|cf|fig|dr|ca)\.$", re.IGNORECASE)
_QATA = re.compile(
    r"^(?:(?P<lat>bilateral|unilateral)\s+)?(?:(?P<kind>[a-z][a-z -]*?)\s*,\s*)?"
    r"(?P<count>" + "|".join(COUNT_WORDS) + r"|\d{1,2})\s+(?P<noun>[a-z][a-z -]*?)\s*,\s*(?P<locs>[^.;:]+?)\s*\.?$"
)
_LATIN_WORD = re.compile(r"[0-9A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]")  # ASCII, Latin-1 and Latin Extended letters, digits
_SENTENCE_FINDING = re.compile(r"^(?P<what>.+?)\s+(?:in|at|within|of)\s+the\s+(?P<where>.+?)\.?$")


@dataclass
class Finding:
    """One target of a report: ``name`` for the segment, ``text`` to condition the model on.

    ``negative``: the finding states an absence ("No effusion."); it gets no segment.
    """

    name: str
    text: str
    negative: bool = False


def tidy_text(text: str) -> str:
    """Collapse whitespace and fix spacing around punctuation, keeping the letter case.

    ``"two infected areas,lower left lung ."`` -> ``"two infected areas, lower left lung."``
    (a point between digits, as in ``"3.5"``, is left alone).
    """
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:!?])(?=[^\s\d])", r"\1 ", text)
    text = re.sub(r"(?<=[a-zA-Z])\.(?=[A-Za-z]{2})", ". ", text)
    return text


def normalize_report(text: str) -> str:
    """Lower-cased, whitespace-collapsed, punctuation-spaced form of a report.

    Two reports that differ only in case, spacing or spacing around punctuation have the same
    normalised form; the contrastive loss treats such reports as positives of each other.
    """
    return tidy_text(text).lower()


def split_findings(report: str) -> list[Finding]:
    """Split ``report`` into one :class:`Finding` per target (see the module docstring).

    Raises :class:`TMCAError` for a report without a letter or digit in any script (empty,
    whitespace, punctuation) and for one without a Latin letter or digit (the text encoders read
    English). Text in other scripts reaches the findings unchanged. Names are at most 64
    characters and unique within the report (``" 2"``, ``" 3"`` appended).
    """
    if not _has_words(report):
        raise TMCAError(f"empty report: {report!r}; give a report that describes the target, e.g. 'Small nodule in the upper left lung.'")
    if not _LATIN_WORD.search(report):
        raise TMCAError(
            f"the report {report!r} has no words in Latin letters: the model understands English reports; "
            "give the report in English, e.g. 'Mass in the left frontal lobe.'"
        )
    clauses = [clause for item in _split_items(report) for clause in split_negated_clauses(item)]
    findings = [finding for clause in clauses for finding in _expand_clause(clause)]
    return _unique_names(findings)


def segment_color(index: int) -> tuple[float, float, float]:
    """A distinct, readable RGB colour (components in 0..1) for segment ``index`` (0-based).

    The first ten come from a fixed palette; later ones step around the hue circle by the
    golden angle so that neighbours stay distinguishable.
    """
    if index < 0:
        raise ValueError(f"segment index must be >= 0, not {index}")
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.9)
    return (round(red, 3), round(green, 3), round(blue, 3))


# ---------------------------------------------------------------------------------------------
# Splitting into items


def _split_items(report: str) -> list[str]:
    """Cut a report into candidate finding texts (tidied, without list markers or headers)."""
    for splitter in (_numbered_items, _bulleted_items, _semicolon_items):
        items = [item for item in splitter(report) if _has_words(item)]
        if len(items) >= 2:
            return [piece for item in items for piece in _split_items(item)]
    return [sentence for sentence in _sentence_items(report) if _has_words(sentence)]


def _numbered_items(report: str) -> list[str]:
    """Items of a list numbered 1, 2, 3 ... (``"1. a 2. b"``); [] when the numbers are not in sequence."""
    markers = list(_NUMBER_MARKER.finditer(report))
    numbers = [int(m.group(1)) for m in markers]
    if len(markers) < 2 or numbers != list(range(1, len(markers) + 1)):
        return []
    ends = [m.start() for m in markers[1:]] + [len(report)]
    return [tidy_text(report[m.end() : end]) for m, end in zip(markers, ends)]


def _bulleted_items(report: str) -> list[str]:
    """Items of a bulleted list (every line after the first starts with -, * or a bullet);
    a first line that is not a bullet stays an item unless it is a header ending with ":"."""
    lines = [line for line in report.splitlines() if line.strip()]
    if len(lines) < 2 or not all(_BULLET_LINE.match(line) for line in lines[1:]):
        return []
    if not _BULLET_LINE.match(lines[0]) and lines[0].rstrip().endswith(":"):
        lines = lines[1:]
    return [tidy_text(_BULLET_LINE.sub("", line)) for line in lines]


def _semicolon_items(report: str) -> list[str]:
    text = tidy_text(report)
    if ";" not in text:
        return []
    header, colon, body = text.partition(":")
    if colon and ";" in body and len(header.split()) <= 4:
        text = body  # "Two lesions: a; b" -> "a; b"
    return [part.strip() for part in text.split(";")]


def _sentence_items(report: str) -> list[str]:
    """Sentences of ``report``; a full stop after a common abbreviation does not end a sentence."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(tidy_text(report)):
        if sentences and _ABBREVIATION_END.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _has_words(text: str) -> bool:
    """True when ``text`` has a letter or digit of any script."""
    return any(character.isalnum() for character in text)


# ---------------------------------------------------------------------------------------------
# One item -> findings


def _expand_clause(clause: str) -> list[Finding]:
    """A negative clause stays one negative finding; a positive one is expanded by :func:`_expand_item`."""
    if is_negative(clause):
        return [Finding(_name_from_text(clause), _as_sentence(clause), negative=True)]
    return _expand_item(clause)


def _expand_item(item: str) -> list[Finding]:
    """Findings of one item: one per location for a QaTa-style item, otherwise the item itself."""
    match = _QATA.match(normalize_report(item))
    if not match:
        return [Finding(_name_from_text(item), _as_sentence(item))]
    count = COUNT_WORDS.get(match["count"]) or int(match["count"])
    locations = _reach_count(_share_organ([loc for loc in re.split(r"\s*,\s*|\s+and\s+", match["locs"]) if loc]), count)
    noun = _singular(match["noun"])
    if len(locations) == 1:
        return [Finding(_shorten(f"{noun}, {locations[0]}"), _as_sentence(item))]
    laterality = "unilateral " if match["lat"] else ""
    findings = []
    for location in locations:
        text = f"{laterality}{match['kind']}, one {noun}, {location}." if match["kind"] else f"one {noun}, {location}."
        findings.append(Finding(_shorten(f"{noun}, {location}"), text[0].upper() + text[1:]))
    return findings


def _share_organ(locations: list[str]) -> list[str]:
    """``["lower left", "lower right lung"]`` -> ``["lower left lung", "lower right lung"]``: a location
    made only of zone and side words takes the organ named by the last location."""
    _, organ = _split_side(_parse_location(locations[-1])[1]) if locations else ("", "")
    if not organ:
        return locations
    completed = []
    for location in locations:
        zones, rest = _parse_location(location)
        side, own_organ = _split_side(rest)
        completed.append(f"{location} {organ}" if not own_organ and (zones or side) else location)
    return completed


def _split_side(text: str) -> tuple[str, str]:
    """``"left lung"`` -> ("left", "lung"); ``"right"`` -> ("right", "")."""
    words = text.split()
    sides = [word for word in words[:1] if word in SIDES]
    return " ".join(sides), " ".join(words[len(sides):])


def _reach_count(locations: list[str], count: int) -> list[str]:
    """Split multi-zone locations until there are ``count`` of them (see the module docstring)."""
    parsed = [_parse_location(location) for location in locations]
    while len(parsed) < count:
        index = _location_to_split(parsed)
        if index is None:
            break
        zones, rest = parsed[index]
        first, remainder = _peel_zone(zones)
        parsed[index : index + 1] = [(first, rest), (remainder, rest)]
    return [" ".join([*zones, rest]).strip() for zones, rest in parsed]


def _parse_location(location: str) -> tuple[list[str], str]:
    """``"midlle upper left lung"`` -> (["upper", "middle"], "left lung"): zones fixed and ordered."""
    words = location.split()
    zones: list[str] = []
    while words and ZONE_TYPOS.get(words[0], words[0]) in (*ZONES, "all"):
        zones.append(ZONE_TYPOS.get(words[0], words[0]))
        words.pop(0)
    ordered = sorted(set(zones), key=lambda zone: ZONES.index(zone) if zone in ZONES else -1)
    return ordered, " ".join(words)


def _location_to_split(parsed: list[tuple[list[str], str]]) -> int | None:
    """Index of the location to split next: a non-contiguous one, else the one with most zones."""
    splittable = [i for i, (zones, _) in enumerate(parsed) if len(zones) >= 2 and "all" not in zones]
    if not splittable:
        return None
    gapped = [i for i in splittable if _has_gap(parsed[i][0])]
    if gapped:
        return gapped[0]
    return max(splittable, key=lambda i: (len(parsed[i][0]), -i))


def _has_gap(zones: list[str]) -> bool:
    indices = [ZONES.index(zone) for zone in zones]
    return max(indices) - min(indices) + 1 > len(indices)


def _peel_zone(zones: list[str]) -> tuple[list[str], list[str]]:
    """Split off the first contiguous run of zones (non-contiguous lists), else the first zone."""
    if _has_gap(zones):
        indices = [ZONES.index(zone) for zone in zones]
        run = next(k for k in range(1, len(indices)) if indices[k] != indices[k - 1] + 1)
        return zones[:run], zones[run:]
    return zones[:1], zones[1:]


def _singular(noun: str) -> str:
    """``"infected areas"`` -> ``"infected area"``; ``"opacities"`` -> ``"opacity"``; ``"masses"`` -> ``"mass"``."""
    head, _, last = noun.rpartition(" ")
    if last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("sses", "xes", "ches", "shes")):
        last = last[:-2]
    elif last.endswith("s") and not last.endswith("ss"):
        last = last[:-1]
    return f"{head} {last}".strip()


# ---------------------------------------------------------------------------------------------
# Names and texts


def _as_sentence(text: str) -> str:
    """Tidied text with a capital first letter and a final full stop."""
    text = tidy_text(text).rstrip(" ,;:")
    if not text.endswith((".", "!", "?", "\u3002", "\uff01", "\uff1f")):  # and the ideographic 。！？
        text += "."
    return text[0].upper() + text[1:]


def _name_from_text(text: str) -> str:
    """A short segment name: ``"Small nodule in the upper left lung."`` -> ``"small nodule, upper left lung"``."""
    plain = normalize_report(text).rstrip(" .;:,!?")
    plain = re.sub(r"^[a-z ]{1,30}:\s+(?=\S)", "", plain)  # "findings: ..." -> "..."
    match = _SENTENCE_FINDING.match(plain)
    if match:
        plain = f"{match['what']}, {match['where']}"
    return _shorten(plain)


def _shorten(name: str) -> str:
    """Cut ``name`` to at most MAX_NAME_LENGTH characters at a word boundary."""
    if len(name) <= MAX_NAME_LENGTH:
        return name
    cut = name[: MAX_NAME_LENGTH + 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut if cut else name[:MAX_NAME_LENGTH]


def _unique_names(findings: list[Finding]) -> list[Finding]:
    """Append " 2", " 3" ... to repeated names, keeping every name within MAX_NAME_LENGTH."""
    used: set[str] = set()
    for finding in findings:
        name, number = finding.name, 1
        while name in used:
            number += 1
            suffix = f" {number}"
            name = finding.name[: MAX_NAME_LENGTH - len(suffix)].rstrip() + suffix
        finding.name = name
        used.add(name)
    return findings
