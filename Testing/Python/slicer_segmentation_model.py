"""A Python model of Slicer's segmentation storage, faithful where the module's import depends on it.

Modelled on Slicer's sources (repository Slicer/Slicer, read with the search tool):

- ``Libs/vtkSegmentationCore/vtkSegmentation.cxx`` ``AddEmptySegment``: with a binary labelmap
  source representation and at least one segment, the new segment shares the first segment's
  labelmap (``sharedSegmentId = this->SegmentIds[0]``) with a fresh label value
  (``GetUniqueLabelValueForSharedLabelmap``); into an empty segmentation it gets its own layer.
- same file, ``ClearSegment``: when other segments share the labelmap, the voxels equal to the
  segment's label value are set to 0 (``vtkImageThreshold`` between LabelValue and LabelValue, in 0);
  otherwise the whole labelmap is cleared.
- ``Libs/vtkSegmentationCore/vtkSegment.cxx`` ``DeepCopyMetadata``: copies Name, Color,
  LabelValue and Tags.
- ``slicer.util.updateSegmentBinaryLabelmapFromArray`` writes the array into a labelmap made by
  ``CreateAndAddLabelVolume(referenceVolume)`` (``vtkSlicerVolumesLogic::CreateLabelVolumeFromVolume``
  in ``Modules/Loadable/Volumes/Logic/vtkSlicerVolumesLogic.cxx`` copies the reference's IJK-to-RAS
  and its parent transform), then calls ``vtkSlicerSegmentationsModuleLogic::
  ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, segmentIds)``
  (``Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.cxx``), which brings the
  labelmap from the labelmap node's parent transform into the segmentation node's ("Apply parent
  transforms if any"), then for each segment calls ``ClearSegment`` and gives it the imported
  labelmap as a layer of its own with label value ``segmentIndex + 1`` (1 here).
- ``slicer.util.arrayFromSegmentBinaryLabelmap(node, id, referenceVolume)`` calls
  ``ExportSegmentsToLabelmapNode`` (same logic file), which puts the labelmap under the reference
  volume's parent transform and, when the segmentation node's parent differs, maps the reference
  geometry through the transform between them: the segment comes back resampled by that transform.

Transforms are whole-voxel translations on one shared grid (``world = local + shift``), enough to
tell a mask in the right place from a moved one.
"""

from __future__ import annotations

import numpy as np

SHAPE = (6, 12, 12)


def shifted(array: np.ndarray, shift) -> np.ndarray:
    """``array`` moved by ``shift`` voxels (k, j, i), zero-filled, on the same grid."""
    out = np.zeros_like(array)
    source = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, array.shape))
    target = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, array.shape))
    out[target] = array[source]
    return out


class ModelSegment:
    def __init__(self, name: str, color=(0.5, 0.5, 0.5)) -> None:
        self.name, self.color, self.label_value, self.tags, self.layer = name, tuple(color), 1, {}, None

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def GetColor(self):
        return self.color

    def GetLabelValue(self):
        return self.label_value

    def SetLabelValue(self, value):
        self.label_value = int(value)

    def DeepCopyMetadata(self, source: "ModelSegment") -> None:
        self.name, self.color, self.label_value, self.tags = source.name, source.color, source.label_value, dict(source.tags)


class ModelSegmentation:
    def __init__(self) -> None:
        self.segments: dict[str, ModelSegment] = {}

    def GetSegment(self, segment_id):
        return self.segments.get(segment_id)

    def GetNumberOfSegments(self):
        return len(self.segments)

    def AddEmptySegment(self, segment_id="", name="", color=None):
        segment_id = segment_id or f"Segment_{len(self.segments) + 1}"
        while segment_id in self.segments:
            segment_id += "_1"
        segment = ModelSegment(name or segment_id, color or (0.5, 0.5, 0.5))
        if self.segments:
            shared = next(iter(self.segments.values())).layer
            segment.layer = shared
            segment.label_value = max(s.label_value for s in self.segments.values() if s.layer is shared) + 1
        else:
            segment.layer = np.zeros(SHAPE, dtype=np.int16)
        self.segments[segment_id] = segment
        return segment_id

    def ClearSegment(self, segment_id):
        segment = self.segments[segment_id]
        sharing = [s for s in self.segments.values() if s is not segment and s.layer is segment.layer]
        if sharing:
            segment.layer[segment.layer == segment.label_value] = 0
        else:
            segment.layer[...] = 0

    def layers(self) -> int:
        return len({id(s.layer) for s in self.segments.values()})

    def add_written_layer(self, masks: dict[str, tuple[str, np.ndarray]]) -> None:
        """Segments as the engine writes them into one layer: segment id -> (name, mask), labels 1, 2, ..."""
        layer = np.zeros(SHAPE, dtype=np.int16)
        for label, (segment_id, (name, mask)) in enumerate(masks.items(), start=1):
            layer[mask > 0] = label
            segment = ModelSegment(name, (label / 10, 0.2, 0.3))
            segment.layer, segment.label_value = layer, label
            self.segments[segment_id] = segment


class ModelTransforms:
    def __init__(self, **shifts) -> None:
        self.shifts = {name: np.asarray(shift) for name, shift in shifts.items()}

    def shift(self, transform_id) -> np.ndarray:
        return self.shifts[transform_id] if transform_id else np.zeros(3, dtype=int)


class ModelNode:
    """A segmentation node or a volume node: an optional segmentation and a parent transform id."""

    def __init__(self, transforms: ModelTransforms, segmentation: ModelSegmentation | None = None, transform_id=None) -> None:
        self.transforms, self.segmentation, self.transform_id = transforms, segmentation, transform_id

    def GetSegmentation(self):
        return self.segmentation

    def GetTransformNodeID(self):
        return self.transform_id

    def SetAndObserveTransformNodeID(self, transform_id):
        self.transform_id = transform_id


def array_from_segment_binary_labelmap(node: ModelNode, segment_id: str, reference: ModelNode) -> np.ndarray:
    segment = node.segmentation.GetSegment(segment_id)
    local = (segment.layer == segment.label_value).astype(np.uint8)
    shift = node.transforms.shift(node.transform_id) - node.transforms.shift(reference.transform_id)
    return shifted(local, shift)


def update_segment_binary_labelmap_from_array(mask: np.ndarray, node: ModelNode, segment_id: str, reference: ModelNode) -> None:
    shift = node.transforms.shift(reference.transform_id) - node.transforms.shift(node.transform_id)
    labelmap = shifted((np.asarray(mask) > 0).astype(np.int16), shift)
    segmentation = node.segmentation
    segmentation.ClearSegment(segment_id)
    segment = segmentation.GetSegment(segment_id)
    segment.SetLabelValue(1)
    segment.layer = labelmap
