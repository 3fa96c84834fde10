"""Helpers of the TMCASegmenter module. Only ``slicer_bridge`` imports slicer or qt; the others run,
and are tested, in plain Python."""
