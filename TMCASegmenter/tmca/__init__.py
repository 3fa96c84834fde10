"""TMCA: language-guided medical image segmentation (Target-informed Multi-level Contrastive Alignments).

The core package of the TMCASegmenter 3D Slicer extension. It never imports slicer, qt or vtk.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "Click", "Segmenter", "TMCAError"]

from tmca.errors import TMCAError


def __getattr__(name: str):
    if name == "Segmenter":
        from tmca.inference import Segmenter

        return Segmenter
    if name == "Click":
        from tmca.interactive import Click

        return Click
    raise AttributeError(f"module 'tmca' has no attribute {name!r}")
