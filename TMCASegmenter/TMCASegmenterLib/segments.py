"""Copying the engine's result segments into the user's segmentation.

The calls are those of Slicer's segmentation API, so Slicer passes its own objects straight in:
``vtkSegmentation`` (``GetSegment``, ``AddEmptySegment``), ``vtkSegment`` (``GetColor``,
``GetLabelValue``, ``SetLabelValue``, ``DeepCopyMetadata``, ``SetName``), nodes with
``GetSegmentation``/``GetTransformNodeID``/``SetAndObserveTransformNodeID``, and
``slicer.util.arrayFromSegmentBinaryLabelmap`` / ``updateSegmentBinaryLabelmapFromArray`` as
``read_mask`` / ``write_mask``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tmca.protocol import FindingRecord

ReadMask = Callable[[object, str, object], np.ndarray]
WriteMask = Callable[[np.ndarray, object, str, object], object]


def add_finding_segments(source, target, findings: Sequence[FindingRecord],
                         read_mask: Callable[[str], np.ndarray], write_mask: Callable[[np.ndarray, str], object]) -> list[tuple[int, str]]:
    """Add one new segment per finding to the ``target`` vtkSegmentation; its existing segments are kept.

    Each finding's mask is read from ``source`` under ``finding.segment_id`` (the id the engine
    wrote it under). Returns ``(finding_index, new_segment_id)`` pairs.
    """
    imported = []
    for index, finding in enumerate(findings):
        sourceSegment = source.GetSegment(finding.segment_id) if finding.segment_id else None
        if sourceSegment is None:
            raise RuntimeError(f"the engine's result has no segment {finding.segment_id!r} for finding {finding.name!r}")
        mask = read_mask(finding.segment_id)
        newId = target.AddEmptySegment("", finding.name, sourceSegment.GetColor())
        newSegment = target.GetSegment(newId)
        # AddEmptySegment gave the new segment a free label value in a layer shared with other
        # segments; DeepCopyMetadata would overwrite it with the source's, and writing the mask
        # then clears that label in the shared layer: another segment's voxels.
        labelValue = newSegment.GetLabelValue()
        newSegment.DeepCopyMetadata(sourceSegment)  # colour and terminology tags
        newSegment.SetLabelValue(labelValue)
        newSegment.SetName(finding.name)
        write_mask(mask, newId)
        imported.append((index, newId))
    return imported


def import_findings(loaded, target, referenceVolume, findings: Sequence[FindingRecord],
                    read_mask: ReadMask, write_mask: WriteMask) -> list[tuple[int, str]]:
    """Copy the findings of the ``loaded`` result node into the ``target`` segmentation node.

    The engine segmented the volume's voxels as written, without its parent transform, so the
    result belongs under that transform: it is put there before any mask is read, or reading it
    on the volume's grid would resample it by the transform.
    """
    loaded.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
    return add_finding_segments(
        loaded.GetSegmentation(), target.GetSegmentation(), findings,
        lambda segmentId: read_mask(loaded, segmentId, referenceVolume),
        lambda mask, segmentId: write_mask(mask, target, segmentId, referenceVolume))


def replace_finding_mask(loaded, target, referenceVolume, finding: FindingRecord, targetSegmentId: str,
                         read_mask: ReadMask, write_mask: WriteMask) -> np.ndarray:
    """Put the mask of ``finding`` from the ``loaded`` result node into the existing segment ``targetSegmentId``.

    Only that segment's voxels change: ``write_mask`` (Slicer's ``updateSegmentBinaryLabelmapFromArray``)
    clears just its label value when it shares a labelmap layer with other segments. Its name,
    colour and terminology stay as the user has them. Returns the written mask (k, j, i).
    """
    if target.GetSegmentation().GetSegment(targetSegmentId) is None:
        raise RuntimeError(f"the segment of finding {finding.name!r} was removed; choose another finding")
    if not finding.segment_id or loaded.GetSegmentation().GetSegment(finding.segment_id) is None:
        raise RuntimeError(f"the engine's result has no segment {finding.segment_id!r} for finding {finding.name!r}")
    loaded.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
    mask = read_mask(loaded, finding.segment_id, referenceVolume)
    write_mask(mask, target, targetSegmentId, referenceVolume)
    return mask
