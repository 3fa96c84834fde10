"""What the warm engine keeps between requests: loaded volumes and results, bounded, and their checks.

A volume is kept by (path, series, modality) with the input's stamp (size and modification time of
the file, its detached data file, or every file of a DICOM folder): a changed input is loaded again,
and a result whose input changed since it was computed is not refined. Results are kept by id; the
least recently used volume or result goes first when a store is full.
"""

from __future__ import annotations

import os
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import SimpleITK as sitk

from tmca.errors import TMCAError, reason
from tmca.formats import detached_data_files, has_suffix
from tmca.imageio import LoadedImage, load_image
from tmca.protocol import ClickRequest

T = TypeVar("T")

Stamp = tuple
VolumeKey = tuple[str, "str | None", "str | None"]


def input_stamp(path: Path) -> Stamp:
    """Size and modification time (ns) of ``path``, of a header's data file, or of every file under a folder."""
    if path.is_dir():
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                status = os.stat(full)
                entries.append((os.path.relpath(full, path), status.st_size, status.st_mtime_ns))
        return tuple(entries)
    files = [path, *detached_data_files(path)]
    try:
        return tuple((file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in files)
    except FileNotFoundError:
        return ()


MAX_RESULT_BYTES = 2 * 1024**3
"""Results kept beyond this many bytes of probabilities and masks are forgotten, oldest first (the newest stays)."""


def _array_bytes(result: Any) -> int:
    return int(getattr(result, "probabilities", np.empty(0)).nbytes + getattr(result, "masks", np.empty(0)).nbytes)


class Lru(Generic[T]):
    """At most ``capacity`` items by key; getting an item makes it the most recent."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise TMCAError(f"an engine cache must hold at least 1 item, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Any, T] = OrderedDict()

    def get(self, key: Any) -> T | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Any, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def peek(self, key: Any) -> T | None:
        """The item without making it the most recent."""
        return self._items.get(key)

    def pop(self, key: Any) -> bool:
        return self._items.pop(key, None) is not None

    def keys(self) -> list[Any]:
        return list(self._items)

    def clear(self) -> int:
        count = len(self._items)
        self._items.clear()
        return count

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class CachedVolume:
    """A loaded input and the stamp of the files it was loaded from."""

    loaded: LoadedImage
    stamp: Stamp


@dataclass
class StoredResult:
    """A result the client may refine: the image it came from, and that image's stamp at the time."""

    result: Any  # tmca.inference.SegmentationResult
    image: Path
    stamp: Stamp


class EngineState:
    """The engine's volumes and results. Not thread-safe: the server holds its lock around every call."""

    def __init__(self, max_results: int = 8, max_volumes: int = 2, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self.volumes: Lru[CachedVolume] = Lru(max_volumes)
        self.results: Lru[StoredResult] = Lru(max_results)
        self.max_result_bytes = max_result_bytes
        self.volume_loads = 0
        self.volume_hits = 0
        self._next_result = 0
        self._prefix = secrets.token_hex(3)  # another engine's (or an earlier one's) result ids never match

    @staticmethod
    def volume_key(image: Path, series_uid: str | None, modality: str | None) -> VolumeKey:
        return (str(image.resolve()), series_uid, modality)

    def cached_volume(self, key: VolumeKey, stamp: Stamp) -> LoadedImage | None:
        """The kept volume when its files have not changed since it was loaded."""
        cached = self.volumes.get(key)
        if cached is None or cached.stamp != stamp:
            return None
        self.volume_hits += 1
        return cached.loaded

    def keep_volume(self, key: VolumeKey, loaded: LoadedImage, stamp: Stamp) -> None:
        self.volume_loads += 1
        self.volumes.put(key, CachedVolume(loaded, stamp))

    def keep_result(self, result: Any, image: Path, stamp: Stamp) -> str:
        """Keep a result; returns its new id."""
        self._next_result += 1
        result_id = f"result-{self._prefix}-{self._next_result}"
        self.results.put(result_id, StoredResult(result, image, stamp))
        while len(self.results) > 1 and self._result_bytes() > self.max_result_bytes:  # big scans: fewer results, never the newest
            self.results.pop(self.results.keys()[0])
        return result_id

    def _result_bytes(self) -> int:
        return sum(_array_bytes(self.results.peek(key).result) for key in self.results.keys())

    def stored(self, result_id: str) -> StoredResult:
        stored = self.results.get(result_id)
        if stored is None:
            raise TMCAError(
                f"unknown result {result_id!r}: the engine keeps the last {self.results.capacity} results (fewer for big scans) and forgets them "
                "when it restarts; segment the report again"
            )
        return stored

    def forget_image(self, image: Path) -> int:
        """Drop every kept volume of ``image`` (any series or modality); returns how many."""
        path = str(image.resolve())
        return sum(self.volumes.pop(key) for key in self.volumes.keys() if key[0] == path)


def load_volume(image: Path, series_uid: str | None, modality: str | None) -> tuple[LoadedImage, Stamp]:
    """Load ``image`` with the stamp taken before reading (a file changed meanwhile is loaded again next time)."""
    stamp = input_stamp(image)
    return load_image(image, series_uid=series_uid, modality=modality), stamp


def finding_index(result: Any, finding: int | str, result_id: str) -> int:
    """The index of ``finding`` (an index, a finding name or a segment id) among the result's segmented findings."""
    records = result.records
    if isinstance(finding, int):
        if finding < len(records):
            return finding
        count = f"findings 0 to {len(records) - 1}" if records else "no segmented finding"
        raise TMCAError(f"result {result_id!r} has {count}; finding {finding} does not exist")
    for index, record in enumerate(records):
        if finding in (record.name, record.segment_id):
            return index
    names = ", ".join(repr(record.name) for record in records) or "none"
    raise TMCAError(f"result {result_id!r} has no finding named {finding!r}; its findings: {names}")


def check_clicks_inside(clicks: Sequence[ClickRequest], reference: sitk.Image) -> None:
    """Refuse a click whose point (LPS, mm) is not on a voxel of ``reference``, by the rule ``Segmenter.refine`` applies."""
    from tmca.interactive import Click, click_voxel

    for number, click in enumerate(clicks, start=1):
        try:
            click_voxel(reference, Click(click.point, click.positive))
        except TMCAError as error:
            raise TMCAError(f"click {number}: {error}") from None


def read_start_mask(path: Path, segment_id: str, reference: sitk.Image) -> np.ndarray:
    """The user's edited mask of one finding, bool (z, y, x) on ``reference``'s grid.

    ``path``: a ``.seg.nrrd`` (the segment ``segment_id``, or its only segment), a label-map NRRD, or any
    image tmca reads (non-zero voxels). It must have the scan's grid (export it with the scan as reference).
    """
    if not path.is_file():
        raise TMCAError(f"start mask not found: {path}; check the path")
    if has_suffix(path, (".nrrd",)):
        from tmca.segio import read_segmentation

        masks, specs, geometry = read_segmentation(path)
        chosen = [mask for mask, spec in zip(masks, specs) if spec.segment_id == segment_id] or (masks if len(masks) == 1 else [])
        if not masks:  # an erased segment: the user starts from nothing
            chosen = [np.zeros(reference.GetSize()[::-1], dtype=bool)]
        if not chosen:
            ids = ", ".join(spec.segment_id for spec in specs) or "none"
            raise TMCAError(f"start mask {path} has no segment {segment_id!r} (its segments: {ids}); save the finding's segment")
        mask = chosen[0]
    else:
        try:
            geometry = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise TMCAError(f"cannot read start mask {path}: {reason(error)}") from error
        mask = sitk.GetArrayFromImage(geometry) != 0
    _check_same_grid(path, geometry, reference)
    return np.asarray(mask, dtype=bool).reshape(reference.GetSize()[::-1])


def _check_same_grid(path: Path, image: sitk.Image, reference: sitk.Image) -> None:
    same = (
        image.GetSize() == reference.GetSize()
        and np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-4, atol=1e-4)
        and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4)
    )
    if not same:
        raise TMCAError(
            f"start mask {path} is not on the scan's grid (size {image.GetSize()} vs {reference.GetSize()}, or spacing, "
            "origin or direction differ); export the segment with the scan as the reference geometry"
        )
