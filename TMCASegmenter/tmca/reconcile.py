"""Report-to-mask reconciliation: does the mask show what the finding's text states?

For every finding, :func:`parse_statement` reads what the text states (how many, which side,
which cranio-caudal region, how big) and :func:`measure_mask` measures the mask (connected
components, each with its side, region and largest diameter); :func:`reconcile` compares them
into checks, each ``agree``, ``disagree`` (with the stated and measured values) or ``not stated``.

Measurement and tolerances (documented in docs/TERMINOLOGY.md):

- Components are 26-connected. Specks smaller than ``SPECK_FRACTION`` (10 %) of the finding's
  largest component are not counted (and not used for side, region or size).
- Side: in the patient frame (LPS: patient left is +x) from the image's direction and origin. A
  component is ``left`` or ``right`` of the centre of the scanned region along x, and
  ``midline`` within ``MIDLINE_FRACTION`` (2 %) of the region's width from it; a midline component
  agrees with any stated side. ``bilateral`` agrees when components lie on both sides.
- Region: ``upper``, ``middle`` or ``lower`` third of the scanned region along the patient's
  superior axis (LPS +z); for a single-slice image (a radiograph, a 2D slice) the image rows, top
  row upper, as radiographs are displayed. A component within ``ZONE_MARGIN`` (5 %) of the region's height from a
  boundary between thirds agrees with both neighbouring thirds. An upper lobe may reach the middle
  third and a lower lobe the middle third; the middle lobe is the middle third.
- Size: the largest diameter (maximum Feret diameter of the voxels, corners included) in mm of the
  largest component, against the largest stated dimension. It agrees within
  ``max(SIZE_RELATIVE_TOLERANCE * stated, SIZE_VOXEL_TOLERANCE * largest spacing)``
  (25 %, or 1.5 voxels for small findings on coarse grids).
- Count: stated (numbers and number words, "a"/"single" = 1, a singular countable noun = 1,
  "several"/"multiple"/a plural noun = at least 2) against the counted components.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from tmca.metrics import bounding_box, label_components
from tmca.terminology import stated_laterality

SPECK_FRACTION = 0.10
MIDLINE_FRACTION = 0.02
ZONE_MARGIN = 0.05
SIZE_RELATIVE_TOLERANCE = 0.25
SIZE_VOXEL_TOLERANCE = 1.5
STATUSES = ("agree", "disagree", "not stated")

NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "single": 1, "solitary": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "both": 2, "pair": 2,
}  # fmt: skip
SEVERAL_WORDS = ("several", "multiple", "numerous", "few", "some", "various", "innumerable", "many")
# Countable finding nouns, singular -> plural; uncountable findings (effusion, consolidation) have no stated count.
COUNTABLE = {
    "nodule": "nodules", "mass": "masses", "lesion": "lesions", "cyst": "cysts", "metastasis": "metastases",
    "tumour": "tumours", "tumor": "tumors", "abscess": "abscesses", "focus": "foci", "infected area": "infected areas",
    "opacity": "opacities", "area": "areas", "deposit": "deposits", "neoplasm": "neoplasms", "spot": "spots",
}  # fmt: skip
ZONES = ("lower", "middle", "upper")  # along LPS +z (inferior to superior)

_NUMBER = r"\d+(?:[.,]\d+)?"
_SIZE = re.compile(rf"(?P<dims>{_NUMBER}(?:\s*(?:x|×|by)\s*{_NUMBER}){{0,2}})\s*(?P<unit>mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?)\b")
_UNIT_AFTER = re.compile(r"^\s*(?:[x×]\s*[\d.,]+\s*)*(?:mm|cm|millimet|centimet)")


@dataclass(frozen=True)
class Statement:
    """What a finding's text states; None where it states nothing."""

    count: int | None = None
    at_least: bool = False  # count is a lower bound ("several nodules": at least 2)
    side: str | None = None  # left, right, bilateral
    zones: tuple[str, ...] = ()  # accepted thirds (lower, middle, upper)
    region: str | None = None  # the words that stated the region, e.g. "upper lobe"
    size_mm: float | None = None  # largest stated dimension


@dataclass(frozen=True)
class Component:
    """One counted connected component of a mask."""

    voxels: int
    side: str  # left, right, midline
    zone: tuple[str, ...]  # one third, or two near a boundary
    diameter_mm: float


@dataclass(frozen=True)
class Check:
    """One comparison: ``name`` (count, side, region, size), ``status`` and the values compared."""

    name: str
    status: str
    stated: str | None = None
    measured: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status, "stated": self.stated, "measured": self.measured}

    @property
    def text(self) -> str:
        """``"side disagree (stated right, found left)"``; ``"size not stated"``."""
        if self.status == "not stated":
            return f"{self.name} not stated"
        return f"{self.name} {self.status} (stated {self.stated}, found {self.measured})"


# ---------------------------------------------------------------------------------------------
# What the text states


def parse_statement(text: str) -> Statement:
    """Parse count, side, region and size from one finding's text (see the module docstring)."""
    plain = re.sub(r"\s+", " ", text.lower().replace("-", " ")).strip()
    count, at_least = _stated_count(plain)
    zones, region = _stated_zones(plain)
    return Statement(count, at_least, _stated_side(plain), zones, region, _stated_size(plain))


def _stated_count(plain: str) -> tuple[int | None, bool]:
    nouns = "|".join(sorted((re.escape(n) for pair in COUNTABLE.items() for n in pair), key=len, reverse=True))
    match = re.search(rf"\b(?P<noun>{nouns})\b", plain)
    if not match:
        return None, False
    before = [word.strip(",.;:()") for word in plain[: match.start()].split()[-5:]]  # "two small well defined nodules"
    for index in range(len(before) - 1, -1, -1):
        word = before[index]
        if word.isdigit() and not _UNIT_AFTER.match(" ".join(before[index + 1 :]) or ""):
            return int(word), False
        if word in NUMBER_WORDS:
            return NUMBER_WORDS[word], False
        if word in SEVERAL_WORDS:
            return 2, True
    plural = match["noun"] in COUNTABLE.values() and match["noun"] not in COUNTABLE
    return (2, True) if plural else (1, False)


def _stated_side(plain: str) -> str | None:
    side = stated_laterality(plain)
    if side is None:
        abbreviation = re.search(r"\b([lr])(?:ul|ml|ll)\b", plain)
        side = {"l": "left", "r": "right"}[abbreviation[1]] if abbreviation else None
    return side


def _stated_zones(plain: str) -> tuple[tuple[str, ...], str | None]:
    """Accepted thirds and the words that stated them; lobes reach into the middle third."""
    lobe = re.search(r"\b(upper|middle|lower) lobes?\b|\b[lr](ul|ml|ll)\b", plain)
    if lobe:
        which = lobe[1] or {"ul": "upper", "ml": "middle", "ll": "lower"}[lobe[2]]
        return {"upper": ("middle", "upper"), "middle": ("middle",), "lower": ("lower", "middle")}[which], f"{which} lobe"
    zone_words = r"(?:upper|middle|mid|lower|apical|basal|all)"
    run = re.search(rf"\b((?:{zone_words}\s+)+)(?:(?:left|right)\s+)?(?:lung|zone|lobe|field)s?\b", plain)
    if not run:
        run = re.search(r"\b(apex|apices|apical|base|bases|basal)\b", plain)
    if not run:
        return (), None
    words = run[1].split()
    mapping = {"upper": "upper", "apical": "upper", "apex": "upper", "apices": "upper", "middle": "middle", "mid": "middle",
               "lower": "lower", "basal": "lower", "base": "lower", "bases": "lower"}  # fmt: skip
    if "all" in words:
        return ZONES, "all"
    zones = tuple(zone for zone in ZONES if zone in {mapping[w] for w in words if w in mapping})
    return zones, " ".join(words)


def _stated_size(plain: str) -> float | None:
    sizes = []
    for match in _SIZE.finditer(plain):
        factor = 10.0 if match["unit"].startswith(("cm", "centi")) else 1.0
        dims = re.split(r"\s*(?:x|×|by)\s*", match["dims"])
        sizes += [float(d.replace(",", ".")) * factor for d in dims]
    return max(sizes) if sizes else None


# ---------------------------------------------------------------------------------------------
# What the mask shows


def measure_mask(mask: np.ndarray, reference: sitk.Image) -> list[Component]:
    """Counted components of ``mask`` (z, y, x) on ``reference``'s grid, largest first."""
    mask = np.asarray(mask, dtype=bool)
    crop = bounding_box(mask)
    if crop is None:
        return []
    from scipy import ndimage  # here, after the empty case: importing scipy takes 0.2 s of a command's start-up
    labels, count = label_components(mask[crop], full_connectivity=True)  # labelled inside the box: fast for small findings
    sizes = sum(np.bincount(plane.ravel(), minlength=count + 1) for plane in labels)[1:]  # per plane: bincount widens to int64
    keep = [index + 1 for index in np.argsort(-sizes, kind="stable") if sizes[index] >= SPECK_FRACTION * sizes.max()]
    to_lps = _index_to_lps(reference)
    low, high = _scanned_extent(reference, to_lps)
    objects = ndimage.find_objects(labels)
    components = []
    for label in keep:
        box = objects[label - 1]
        inside = labels[box] == label
        start = [s.start + c.start for s, c in zip(box, crop)]
        centre_index = np.asarray(ndimage.center_of_mass(inside)) + start  # no (N, 3) index array for a large finding
        centre = to_lps(centre_index)
        surface = np.argwhere(inside & ~ndimage.binary_erosion(inside)) + start  # the diameter runs between surface voxels
        zone = _row_zone(centre_index[1], mask.shape[1]) if mask.shape[0] == 1 else _zone(centre, low, high)
        components.append(Component(int(sizes[label - 1]), _side(centre, low, high), zone, _diameter_mm(surface, to_lps)))
    return components


def _index_to_lps(reference: sitk.Image):
    """Function mapping (z, y, x) indices (n, 3) or (3,) to LPS millimetres."""
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    matrix = direction * np.asarray(reference.GetSpacing(), dtype=float)
    origin = np.asarray(reference.GetOrigin(), dtype=float)
    return lambda zyx: origin + (np.asarray(zyx, dtype=float)[..., ::-1]) @ matrix.T


def _scanned_extent(reference: sitk.Image, to_lps) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box (low, high corners) of the scanned region (voxel corners included)."""
    size = np.asarray(reference.GetSize()[::-1], dtype=float)
    corners = np.array([[z, y, x] for z in (-0.5, size[0] - 0.5) for y in (-0.5, size[1] - 0.5) for x in (-0.5, size[2] - 0.5)])
    points = to_lps(corners)
    return points.min(axis=0), points.max(axis=0)


def _side(centre: np.ndarray, low: np.ndarray, high: np.ndarray) -> str:
    width = high[0] - low[0]
    offset = centre[0] - (low[0] + high[0]) / 2
    if width <= 0 or abs(offset) <= MIDLINE_FRACTION * width:
        return "midline"
    return "left" if offset > 0 else "right"


def _zone(centre: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[str, ...]:
    height = high[2] - low[2]
    if height <= 0:
        return ZONES
    position = (centre[2] - low[2]) / height
    return tuple(zone for index, zone in enumerate(ZONES) if index / 3 - ZONE_MARGIN <= position <= (index + 1) / 3 + ZONE_MARGIN)


def _row_zone(row: float, rows: int) -> tuple[str, ...]:
    """Third of a single-slice image by row (row 0 at the top is upper)."""
    position = 1.0 - (row + 0.5) / rows
    return tuple(zone for index, zone in enumerate(ZONES) if index / 3 - ZONE_MARGIN <= position <= (index + 1) / 3 + ZONE_MARGIN)


def _diameter_mm(indices: np.ndarray, to_lps) -> float:
    """Largest distance between two voxel corners of the component (maximum Feret diameter)."""
    from scipy.spatial import ConvexHull, QhullError

    offsets = np.array([[z, y, x] for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)])
    corners = to_lps((indices[:, None, :] + offsets[None]).reshape(-1, 3))
    try:
        corners = corners[ConvexHull(corners).vertices]
    except QhullError:
        pass
    if len(corners) > 4000:
        corners = corners[np.linspace(0, len(corners) - 1, 4000).astype(int)]
    differences = corners[:, None, :] - corners[None, :, :]
    return float(np.sqrt((differences**2).sum(axis=-1)).max())


# ---------------------------------------------------------------------------------------------
# Comparison


def reconcile(statement: Statement, components: list[Component], spacing: tuple[float, ...]) -> list[Check]:
    """The four checks of one finding (count, side, region, size), in that order."""
    found = len(components)
    return [
        _count_check(statement, found),
        _side_check(statement, components),
        _region_check(statement, components),
        _size_check(statement, components, max(spacing)),
    ]


def check_finding(text: str, mask: np.ndarray, reference: sitk.Image) -> list[Check]:
    """Parse ``text``, measure ``mask`` and compare them."""
    return reconcile(parse_statement(text), measure_mask(mask, reference), reference.GetSpacing())


def _count_check(statement: Statement, found: int) -> Check:
    if statement.count is None:
        return Check("count", "not stated")
    stated = f"at least {statement.count}" if statement.at_least else str(statement.count)
    agree = found >= statement.count if statement.at_least else found == statement.count
    return Check("count", "agree" if agree else "disagree", stated, str(found))


def _side_check(statement: Statement, components: list[Component]) -> Check:
    if statement.side is None:
        return Check("side", "not stated")
    if not components:
        return Check("side", "disagree", statement.side, "nothing segmented")
    sides = {c.side for c in components}
    lateral = sides - {"midline"}
    measured = "bilateral" if lateral == {"left", "right"} else (lateral.pop() if lateral else "midline")
    if statement.side == "bilateral":
        agree = measured == "bilateral"
    else:
        agree = sides <= {statement.side, "midline"}
    return Check("side", "agree" if agree else "disagree", statement.side, measured)


def _region_check(statement: Statement, components: list[Component]) -> Check:
    if not statement.zones:
        return Check("region", "not stated")
    stated = statement.region or "/".join(statement.zones)
    if not components:
        return Check("region", "disagree", stated, "nothing segmented")
    agree = all(set(c.zone) & set(statement.zones) for c in components)
    zones = Counter("/".join(c.zone) + " third" for c in components)
    measured = ", ".join(zone if count == 1 else f"{zone} x{count}" for zone, count in zones.items())  # many components: one entry per zone
    return Check("region", "agree" if agree else "disagree", stated, measured)


def _size_check(statement: Statement, components: list[Component], largest_spacing: float) -> Check:
    if statement.size_mm is None:
        return Check("size", "not stated")
    stated = f"{statement.size_mm:g} mm"
    if not components:
        return Check("size", "disagree", stated, "nothing segmented")
    measured = max(c.diameter_mm for c in components)
    tolerance = max(SIZE_RELATIVE_TOLERANCE * statement.size_mm, SIZE_VOXEL_TOLERANCE * largest_spacing)
    status = "agree" if abs(measured - statement.size_mm) <= tolerance else "disagree"
    return Check("size", status, stated, f"{measured:.1f} mm")


def checks_text(checks: list[dict]) -> str:
    """One line for a finding's check dicts: ``"count agree (stated 1, found 1), side disagree (...), size not stated"``."""
    return ", ".join(Check(c["name"], c["status"], c.get("stated"), c.get("measured")).text for c in checks) or "none"


def disagreements(checks: list[Check] | list[dict]) -> int:
    """How many checks (objects or their dicts) disagree."""
    return sum(1 for c in checks if (c["status"] if isinstance(c, dict) else c.status) == "disagree")
