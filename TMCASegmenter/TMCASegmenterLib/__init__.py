"""Slicer-side helpers of the TMCASegmenter module (the only code besides TMCASegmenter.py that uses Slicer's API)."""
