"""Importing result segments (TMCASegmenterLib.segments) against a model of Slicer's shared labelmap layers."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_segmentation_model import (SHAPE, ModelNode, ModelSegmentation, ModelTransforms,
                                       array_from_segment_binary_labelmap as read_mask, shifted,
                                       update_segment_binary_labelmap_from_array as write_mask)
from TMCASegmenterLib.segments import add_finding_segments, import_findings
from tmca.protocol import FindingRecord, segment_id


def _box(k, j, i, size=3) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[k:k + 2, j:j + size, i:i + size] = 1
    return mask


def _result(masks: list[np.ndarray], names: list[str]) -> tuple[ModelSegmentation, list[FindingRecord]]:
    """An engine result: one layer, finding i under segment_id(i) with label i + 1."""
    source = ModelSegmentation()
    source.add_written_layer({segment_id(i): (name, mask) for i, (name, mask) in enumerate(zip(names, masks))})
    findings = [FindingRecord(name, segment_id=segment_id(i), label_value=i + 1) for i, name in enumerate(names)]
    return source, findings


def _target_with_liver() -> tuple[ModelSegmentation, np.ndarray]:
    target = ModelSegmentation()
    liver = _box(0, 0, 0, size=5)
    liverId = target.AddEmptySegment("liver", "liver")
    segment = target.GetSegment(liverId)
    segment.layer[liver > 0] = segment.GetLabelValue()
    return target, liver


def _mask(segmentation: ModelSegmentation, segmentId: str) -> np.ndarray:
    segment = segmentation.GetSegment(segmentId)
    return (segment.layer == segment.GetLabelValue()).astype(np.uint8)


def _import(source, target, findings):
    return add_finding_segments(source, target, findings, lambda sid: _mask(source, sid),
                                lambda mask, sid: _write(target, mask, sid))


def _write(target: ModelSegmentation, mask, segmentId) -> None:
    transforms = ModelTransforms()
    node = ModelNode(transforms, target)
    write_mask(mask, node, segmentId, ModelNode(transforms))


def _todays_copy(source, target, findings) -> None:
    """The sequence TMCASegmenter.py ran before: AddEmptySegment, DeepCopyMetadata, write the mask."""
    for finding in findings:
        sourceSegment = source.GetSegment(finding.segment_id)
        mask = _mask(source, finding.segment_id)
        newId = target.AddEmptySegment("", finding.name, sourceSegment.GetColor())
        target.GetSegment(newId).DeepCopyMetadata(sourceSegment)
        target.GetSegment(newId).SetName(finding.name)
        _write(target, mask, newId)


def test_the_model_reproduces_the_erased_segment_of_the_old_copy():
    target, liver = _target_with_liver()
    source, findings = _result([_box(3, 6, 6)], ["nodule"])
    _todays_copy(source, target, findings)
    assert not _mask(target, "liver").any(), "the old sequence wipes the existing segment"


def test_new_segments_keep_the_existing_ones():
    target, liver = _target_with_liver()
    nodule = _box(3, 6, 6)
    source, findings = _result([nodule], ["nodule"])
    pairs = _import(source, target, findings)
    assert np.array_equal(_mask(target, "liver"), liver)
    (index, newId), = pairs
    assert index == 0 and np.array_equal(_mask(target, newId), nodule)
    assert target.GetSegment(newId).GetName() == "nodule"
    assert target.GetSegment(newId).GetColor() == source.GetSegment(segment_id(0)).GetColor()


def test_a_second_apply_with_overlapping_findings_keeps_every_segment():
    target = ModelSegmentation()
    first = [_box(0, 0, 0), _box(0, 6, 6)]
    source, findings = _result(first, ["a", "b"])
    firstPairs = _import(source, target, findings)

    second = [_box(3, 0, 6), _box(3, 1, 7)]  # they overlap: the engine writes them in two layers, label 1 each
    source = ModelSegmentation()
    source.add_written_layer({segment_id(0): ("c", second[0])})
    source.add_written_layer({segment_id(1): ("d", second[1])})
    assert source.layers() == 2
    findings = [FindingRecord("c", segment_id=segment_id(0), layer=0, label_value=1),
                FindingRecord("d", segment_id=segment_id(1), layer=1, label_value=1)]
    secondPairs = _import(source, target, findings)

    assert target.GetNumberOfSegments() == 4
    for (_, newId), mask in zip(firstPairs + secondPairs, first + second):
        assert np.array_equal(_mask(target, newId), mask), newId


def test_findings_are_read_by_segment_id_not_by_name_or_position():
    source, _ = _result([_box(0, 0, 0), _box(3, 6, 6)], ["renamed by the user", "another name"])
    findings = [FindingRecord("second", segment_id=segment_id(1)), FindingRecord("first", segment_id=segment_id(0))]
    target = ModelSegmentation()
    pairs = _import(source, target, findings)
    assert [target.GetSegment(newId).GetName() for _, newId in pairs] == ["second", "first"]
    assert np.array_equal(_mask(target, pairs[0][1]), _box(3, 6, 6))
    assert np.array_equal(_mask(target, pairs[1][1]), _box(0, 0, 0))


def test_a_finding_without_its_segment_is_an_error():
    source, _ = _result([_box(0, 0, 0)], ["a"])
    with pytest.raises(RuntimeError, match="Segment_7"):
        _import(source, ModelSegmentation(), [FindingRecord("a", segment_id="Segment_7")])
    with pytest.raises(RuntimeError, match="no segment"):
        _import(source, ModelSegmentation(), [FindingRecord("a")])


def test_the_result_lands_under_the_volumes_transform():
    transforms = ModelTransforms(moved=(0, 2, 3))
    volume = ModelNode(transforms, transform_id="moved")
    target = ModelNode(transforms, ModelSegmentation(), transform_id="moved")  # the module creates it under the volume's transform
    nodule = _box(2, 4, 4)
    source, findings = _result([nodule], ["nodule"])
    loaded = ModelNode(transforms, source)  # a file read into the scene has no parent transform

    before = read_mask(loaded, segment_id(0), volume)
    assert not np.array_equal(before, nodule), "reading before the result is under the transform moves it"
    assert np.array_equal(before, shifted(nodule, (0, -2, -3)))

    (_, newId), = import_findings(loaded, target, volume, findings, read_mask, write_mask)
    assert loaded.GetTransformNodeID() == "moved"
    assert np.array_equal(read_mask(target, newId, volume), nodule)
