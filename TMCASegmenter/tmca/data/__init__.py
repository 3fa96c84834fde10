"""Datasets: sample tables in the ``lvit``, ``qata`` and ``csv`` formats, and 2D training slices."""

from tmca.data.datasets import FORMATS, LoadResult, Sample, SkippedRow, SliceDataset, load_samples

__all__ = ["FORMATS", "LoadResult", "Sample", "SkippedRow", "SliceDataset", "load_samples"]
