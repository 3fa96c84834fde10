"""Datasets: sample tables in the ``lvit``, ``qata`` and ``csv`` formats, and 2D training slices."""

from tmca.data.datasets import LoadResult, Sample, SkippedRow, SliceDataset, load_samples, load_split

__all__ = ["LoadResult", "Sample", "SkippedRow", "SliceDataset", "load_samples", "load_split"]
