"""The inference engine: load a model once, segment any scan from a report.

``Segmenter(model=None, device="auto").segment(image, report)`` returns the findings' masks and
probabilities on the input's exact grid. The Slicer module, the batch runner and the command line
all go through this class.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from tmca.backends import make_runner
from tmca.checkpoint import load_checkpoint
from tmca.choices import PLANE_AXIS, check_modality, check_plane
from tmca.devices import resolve_device
from tmca.errors import CancelledError, TMCAError
from tmca.feature_cache import CachedEncoderRunner
from tmca.findings import Finding, segment_color, split_findings, tidy_text
from tmca.imageio import LoadedImage, load_image, validate_voxels
from tmca.interactive import Click
from tmca.metrics import mask_statistics
from tmca.models import resolve_model
from tmca.negation import is_negative
from tmca.networks.fusion import fuse_for_inference
from tmca.networks.text_encoder import TextFeatures
from tmca.preprocess import channel_note, model_input, preprocess_channels
from tmca.protocol import FindingRecord, segment_id
from tmca.reconcile import check_finding
from tmca.refine import RefineSource, SliceRefiner, click_voxels, finding_index, refine_probabilities, start_probability
from tmca.segio import SegmentSpec, layer_placement, write_segmentation, write_volume
from tmca.sliding import predict_by_windows, resolve_large_images, window_count
from tmca.terminology import code_finding

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class SegmentationResult:
    """Per-finding probabilities (K, z, y, x) float32 on ``reference``'s grid and their thresholded masks.

    ``findings`` are the positive findings (one segment each); ``negative_findings`` the findings
    of absence, which get no segment (K is 0 for a report that states only absences). Each record
    carries the finding's coded terminology and its report-to-mask checks. ``source`` is what
    :meth:`Segmenter.refine` needs to refine a finding (None for a model without click inputs).
    """

    reference: sitk.Image
    findings: list[Finding]
    probabilities: np.ndarray
    threshold: float
    relevance: np.ndarray | None = None
    negative_findings: list[Finding] = field(default_factory=list)
    source: RefineSource | None = field(default=None, repr=False, compare=False)
    clicks: dict[int, tuple] = field(default_factory=dict, repr=False, compare=False)  # finding -> the click voxels it was refined with
    unchanged_from: InitVar[tuple["SegmentationResult", int] | None] = None
    masks: np.ndarray = field(init=False)
    records: list[FindingRecord] = field(init=False)

    def __post_init__(self, unchanged_from: tuple["SegmentationResult", int] | None) -> None:
        """``unchanged_from=(result, k)``: every finding but k has the same mask as in ``result``, whose
        measurements are reused (a refined result re-measures only the finding the clicks changed)."""
        self.masks = self.probabilities >= self.threshold
        voxel_mm3 = float(np.prod(self.reference.GetSpacing()))
        self.records = []
        for index, (finding, mask, (layer, label)) in enumerate(zip(self.findings, self.masks, layer_placement(self.masks))):
            if unchanged_from is not None and index != unchanged_from[1]:
                previous = unchanged_from[0].records[index]
                self.records.append(dataclasses.replace(previous, layer=layer, label_value=label))
                continue
            voxels, volume_ml, components = mask_statistics(mask, voxel_mm3)
            terminology = code_finding(finding.text).as_dict()
            checks = [check.as_dict() for check in check_finding(finding.text, mask, self.reference)]
            self.records.append(
                FindingRecord(
                    finding.name, finding.text, segment_id(index), layer, label, voxels, round(volume_ml, 4), components,
                    terminology=terminology, checks=checks,
                )  # fmt: skip
            )

    @property
    def negative_records(self) -> list[FindingRecord]:
        """One record per finding of absence (no segment, no checks)."""
        return [
            FindingRecord(f.name, f.text, negative=True, terminology=code_finding(f.text).as_dict()) for f in self.negative_findings
        ]

    def save(self, output: str | Path, probability: str | Path | None = None, relevance: str | Path | None = None) -> None:
        """Write the segmentation (.seg.nrrd) and, when asked, the probability and relevance maps; each atomically."""
        write_segmentation(output, list(self.masks), self.reference, self.segments)
        if probability:
            write_volume(probability, self.probability)
        if relevance and self.relevance is not None:
            write_volume(relevance, self.relevance_image)

    def with_threshold(self, threshold: float) -> "SegmentationResult":
        """The same probabilities cut at another threshold, without a new run."""
        return SegmentationResult(
            self.reference, self.findings, self.probabilities, check_threshold(threshold), self.relevance, self.negative_findings, self.source,
            self.clicks,
        )  # fmt: skip

    @property
    def segments(self) -> list[SegmentSpec]:
        return [
            SegmentSpec(record.name, segment_color(index), record.segment_id, record.terminology.get("slicer_terminology_entry", ""))
            for index, record in enumerate(self.records)
        ]

    @property
    def labelmap(self) -> sitk.Image:
        """uint8 label map (finding i -> i + 1; where findings overlap, the most probable wins)."""
        if not self.findings:
            return _on_grid(np.zeros(self.probabilities.shape[1:], dtype=np.uint8), self.reference)
        best = np.argmax(self.probabilities, axis=0).astype(np.uint8) + 1
        labels = np.where(self.masks.any(axis=0), best, 0).astype(np.uint8)
        return _on_grid(labels, self.reference)

    @property
    def probability(self) -> sitk.Image:
        """float32 probability image: scalar for one finding (zeros for none), one component per finding otherwise."""
        if not self.findings:
            return _on_grid(np.zeros(self.probabilities.shape[1:], dtype=np.float32), self.reference)
        return _on_grid(self.probabilities[0] if len(self.findings) == 1 else np.moveaxis(self.probabilities, 0, -1), self.reference)

    @property
    def relevance_image(self) -> sitk.Image | None:
        if self.relevance is None:
            return None
        return _on_grid(self.relevance[0] if len(self.findings) == 1 else np.moveaxis(self.relevance, 0, -1), self.reference)


def _on_grid(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    image.CopyInformation(reference)
    return image


def check_threshold(threshold: float) -> float:
    if not 0.0 < float(threshold) < 1.0:
        raise TMCAError(f"threshold must be between 0 and 1 (exclusive), not {threshold}")
    return float(threshold)


class _Stopper:
    """Turns a cancel flag (a callable or a threading.Event) into a prompt CancelledError."""

    def __init__(self, cancel: Callable[[], bool] | threading.Event | None) -> None:
        self.cancel = cancel

    def check(self) -> None:
        flag = self.cancel
        if flag is not None and (flag.is_set() if isinstance(flag, threading.Event) else flag()):
            raise CancelledError("cancelled by the user; nothing was written")


class Segmenter:
    """Load a TMCA checkpoint once and segment scans from their reports.

    model: a checkpoint folder, a training run folder, or None for the bundled demo model; a 2D
    model (a 3D checkpoint raises TMCAError: tmca segments slice by slice).
    device: "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda", "cuda:N" or "mps".
    batch_size: slices per forward pass (None: 16 on CPU, 64 on a GPU).
    backend: "eager" (PyTorch), "onnx" (ONNX Runtime) or "openvino" (OpenVINO; both CPU, 2D models, running
    an export made once per checkpoint and cached) or "auto" (the fastest installed one where it applies,
    else eager); see :mod:`tmca.backends`.
    feature_cache_mb: keep up to this many MB of image-encoder features (and the last preprocessed
    volume), so that another report on the same scan runs the decoder only (the warm engine's
    setting; 0, the default, keeps nothing).
    large_images: how slices larger than the model's input size are predicted: None (as the model was
    trained, its config's ``large_images``), "resize" (squeezed to the input size) or "tile" (a window of
    the input size slides over the slice at native resolution; see :mod:`tmca.sliding`). batch_size
    then counts windows.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        backend: str = "eager",
        feature_cache_mb: int = 0,
        large_images: str | None = None,
    ) -> None:
        self.model_path = resolve_model(model)
        self.device = resolve_device(device)
        self.model, self.checkpoint = load_checkpoint(self.model_path, self.device)
        self.config = self.model.config
        if self.config.spatial_dims != 2:
            raise TMCAError(
                f"model {self.model_path} is a {self.config.spatial_dims}D model; tmca segments with 2D models only "
                "(slice by slice); train a 2D model with tmca train"
            )
        fuse_for_inference(self.model)
        self.model = self.model.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU
        self.batch_size = batch_size or (16 if self.device.type == "cpu" else 64)
        if self.batch_size < 1:
            raise TMCAError(f"batch size must be at least 1, not {batch_size}")
        self.large_images = resolve_large_images(large_images, self.config.large_images)
        self.runner = make_runner(backend, self.model, self.model_path, self.device)
        if feature_cache_mb < 0:
            raise TMCAError(f"feature_cache_mb must be 0 or more, not {feature_cache_mb}")
        if feature_cache_mb:
            self.runner = CachedEncoderRunner(self.runner, feature_cache_mb * 1024**2)
        self._preprocessed: tuple[LoadedImage, tuple, np.ndarray] | None = None

    def segment(
        self,
        image: sitk.Image | LoadedImage | str | Path,
        report: str,
        threshold: float = 0.5,
        split_findings: bool = True,
        progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | threading.Event | None = None,
        plane: str | None = None,
        modality: str | None = None,
        series_uid: str | None = None,
        with_relevance: bool = False,
    ) -> SegmentationResult:
        """Segment every finding of ``report`` in ``image`` (a path, a SimpleITK image or a LoadedImage).

        plane: the slicing plane of a 2D model (None: the plane it was trained on). modality:
        overrides the image's own; an image without one is taken as the model's training modality.
        An image is converted to the model's channels (colour to grey, grey repeated for a colour
        model; :func:`tmca.preprocess.preprocess_channels`) with a warning saying so.

        progress(done, total, stage) is called as work advances; a cancel flag that becomes true
        (or an exception from the callback) stops the work promptly with :class:`CancelledError`.
        """
        threshold = check_threshold(threshold)
        plane = check_plane(plane or self.config.plane)
        every_finding = _findings_of(report, split_findings)
        findings = [finding for finding in every_finding if not finding.negative]
        negative = [finding for finding in every_finding if finding.negative]
        stopper = _Stopper(cancel)
        notify = progress or (lambda done, total, stage: None)
        notify(0, 1, "loading")
        loaded = self._load(image, modality, series_uid)
        stopper.check()
        notify(0, 1, "preprocessing")
        note = channel_note(loaded, self.config.in_channels)
        if note:
            warnings.warn(note, stacklevel=2)  # one text for every image: the CLI shows it once
        volume = self._preprocess(loaded)
        if loaded.was_2d:
            plane = "axial"  # a single slice
        if not findings:  # only findings of absence: nothing to segment, the model does not run
            empty = np.zeros((0, *volume.shape[1:]), dtype=np.float32)
            notify(1, 1, "postprocessing")
            return SegmentationResult(loaded.image, [], empty, threshold, empty if with_relevance else None, negative)
        texts = self._encode_findings(findings) if self.config.text else [None] * len(findings)
        probabilities, relevance = self._run_slices(volume, texts, PLANE_AXIS[plane], with_relevance, notify, stopper)
        notify(1, 1, "postprocessing")
        source = RefineSource(volume, PLANE_AXIS[plane], texts) if self.can_refine else None
        return SegmentationResult(loaded.image, findings, probabilities, threshold, relevance, negative, source)

    @property
    def can_refine(self) -> bool:
        """Whether :meth:`refine` works: a model trained with click inputs that squeezes slices to its input size
        (refining through sliding windows is not built)."""
        return bool(self.config.click_inputs) and self.large_images != "tile"

    def refine(
        self,
        result: SegmentationResult,
        finding: int | str,
        clicks: list[Click],
        threshold: float | None = None,
        start_mask: np.ndarray | sitk.Image | None = None,
    ) -> SegmentationResult:
        """A new result in which only ``finding`` (its index or name) changed, redrawn with ``clicks``.

        ``clicks``: every click on this finding so far (``tmca.Click(point, positive)``, points in the
        image's LPS millimetres); ``result``: the latest result (its mask is the prior the model
        corrects). ``start_mask``: the user's own edited mask of the finding (z, y, x array or an image
        on the scan's grid) to start from instead. Only the clicked slices and the neighbours where the
        target continues are recomputed. Bad input (no such finding, a click outside the image, a
        model without click inputs) raises TMCAError and leaves ``result`` unchanged.
        """
        if self.config.click_inputs and not self.can_refine:
            raise TMCAError(
                f"model {self.model_path} tiles large images with a sliding window, and refining with clicks through windows is "
                "not built; correct the mask in Segment Editor"
            )
        if not self.can_refine:
            raise TMCAError(
                f"model {self.model_path} was trained without click inputs, so it cannot refine a finding with clicks; "
                "correct the mask in Segment Editor, or train a model with --click-training"
            )
        if result.source is None:
            raise TMCAError("this result holds no source volume to refine (it was computed by a model without click inputs)")
        index = finding_index([finding.name for finding in result.findings], finding)
        voxels = click_voxels(result.reference, clicks)
        threshold = result.threshold if threshold is None else check_threshold(threshold)
        prior = start_probability(start_mask, result.probabilities[index], result.reference)
        refiner = SliceRefiner(result.source, result.source.texts[index], self.config.image_size, self._prepare_slice, self.model.encoder,
                               self._decode_with_clicks)  # fmt: skip
        probabilities = result.probabilities.copy()
        if start_mask is not None:
            probabilities[index] = prior  # the user's edits stay where no click redraws
        applied = result.clicks.get(index, ()) if start_mask is None and threshold == result.threshold else ()
        with torch.inference_mode():
            refine_probabilities(refiner, probabilities[index], prior, voxels, result.source.axis, threshold, applied)
        unchanged = (result, index) if threshold == result.threshold else None
        return SegmentationResult(
            result.reference, result.findings, probabilities, threshold, result.relevance, result.negative_findings, result.source,
            {**result.clicks, index: tuple(voxels)}, unchanged,
        )  # fmt: skip

    def _prepare_slice(self, image: np.ndarray) -> torch.Tensor:
        """One preprocessed slice (h, w) or (C, h, w) -> the model's input (1, C, S, S)."""
        return self._model_input(image[None])

    def _model_input(self, slices: np.ndarray) -> torch.Tensor:
        """Preprocessed slices (N, h, w) or (N, C, h, w) -> the model's input (N, C, S, S), channels_last."""
        x = model_input(torch.from_numpy(np.ascontiguousarray(slices)).to(self.device, torch.float32), self.config.image_size)
        return x.contiguous(memory_format=torch.channels_last)

    def _decode_with_clicks(self, features, x: torch.Tensor, text: TextFeatures | None, clicks: torch.Tensor) -> torch.Tensor:
        return self.model.decode(features, x, text, with_alignment=False, clicks=clicks).logits

    def _preprocess(self, loaded: LoadedImage) -> np.ndarray:
        """The model-ready volume (C, z, y, x); with a feature cache, the last one is kept for the same LoadedImage object."""
        key = (self.config.modality, repr(self.config.intensity_policy))
        if self._preprocessed is not None and self._preprocessed[0] is loaded and self._preprocessed[1] == key:
            return self._preprocessed[2]
        volume = preprocess_channels(loaded, self.config.modality, self.config.intensity_policy or None, self.config.in_channels)
        if isinstance(self.runner, CachedEncoderRunner):
            self._preprocessed = (loaded, key, volume)
        return volume

    def _load(self, image, modality: str | None, series_uid: str | None) -> LoadedImage:
        if isinstance(image, LoadedImage):
            return image
        if isinstance(image, sitk.Image):
            if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
                raise TMCAError("pass a scalar 3D SimpleITK image (or a file path, which handles 2D, colour and DICOM)")
            validate_voxels(image, "the image")
            return LoadedImage(sitk.Cast(image, sitk.sitkFloat32), check_modality(modality) if modality else "OT", "<image>", None, False, False)
        return load_image(image, series_uid=series_uid, modality=modality)

    def _encode_findings(self, findings: list[Finding]) -> list[TextFeatures]:
        with torch.inference_mode():
            features = [self.model.encode_text([finding.text]) for finding in findings]
        for finding, feature in zip(findings, features):
            if feature.truncated[0]:
                warnings.warn(
                    f"the finding {finding.name!r} is longer than the text encoder's {self.config.max_length} tokens; "
                    "the rest was ignored",
                    stacklevel=3,
                )
        return features

    def _run_slices(self, volume, texts, axis, with_relevance, notify, stopper):
        """2D model: walk the slices of ``volume`` (C, z, y, x) along ``axis`` in batches; the image encoder runs once per batch."""
        slices = np.moveaxis(volume, axis + 1, 0)  # (N, C, h, w) view
        count, _, height, width = slices.shape
        probabilities = np.zeros((len(texts), count, height, width), dtype=np.float32)
        relevance = np.zeros_like(probabilities) if with_relevance else None
        start, total = 0, count
        notify(0, total, "segmenting")
        while start < count:
            stopper.check()
            stop = min(start + self._slices_per_batch((height, width)), count)
            try:
                batch_probabilities, batch_relevance = self._predict_batch(slices[start:stop], texts, (height, width), with_relevance, stopper.check)
            except torch.cuda.OutOfMemoryError:
                self._shrink_after_out_of_memory()
                continue
            probabilities[:, start:stop] = batch_probabilities
            if relevance is not None:
                relevance[:, start:stop] = batch_relevance
            start = stop
            notify(start, total, "segmenting")
        probabilities = np.moveaxis(probabilities, 1, axis + 1)
        return np.ascontiguousarray(probabilities), None if relevance is None else np.ascontiguousarray(np.moveaxis(relevance, 1, axis + 1))

    def _slides(self, size: tuple[int, int]) -> bool:
        """A tile model sees every slice of another size at native scale (larger: windows; smaller: zero-padded, as in training)."""
        return self.large_images == "tile" and tuple(int(extent) for extent in size) != (self.config.image_size,) * 2

    def _slices_per_batch(self, size: tuple[int, int]) -> int:
        """Slices per batch: ``batch_size``, or when windows slide, as many slices as ``batch_size`` windows hold (at least one)."""
        if not self._slides(size):
            return self.batch_size
        return max(1, self.batch_size // window_count(size, self.config.image_size))

    def _predict_batch(self, slices: np.ndarray, texts, size: tuple[int, int], with_relevance: bool, check=None):
        if self._slides(size):
            with torch.inference_mode(), self._autocast():
                native = torch.from_numpy(np.ascontiguousarray(slices)).to(self.device, torch.float32)  # (N, C, H, W)
                probabilities, relevance = predict_by_windows(
                    self.runner.encode, self.runner.decode, native, texts, self.config.image_size, self.batch_size, with_relevance, check=check
                )  # fmt: skip
            return probabilities.cpu().numpy(), None if relevance is None else relevance.cpu().numpy()
        with torch.inference_mode(), self._autocast():
            x = self._model_input(slices)
            features = self.runner.encode(x)
            probabilities, relevance = [], []
            for text in texts:
                logits, last_relevance = self.runner.decode(features, x, None if text is None else text.expand(x.shape[0]))
                probabilities.append(_resize_sigmoid(logits, size))
                if with_relevance:
                    relevance.append(_resize_sigmoid(last_relevance, size) if last_relevance is not None else torch.zeros_like(probabilities[-1]))
        return torch.stack(probabilities).cpu().numpy(), torch.stack(relevance).cpu().numpy() if with_relevance else None

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def _shrink_after_out_of_memory(self) -> None:
        """On CUDA out-of-memory: halve the batch; below one slice, fall back to the CPU."""
        torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size //= 2
            log.warning("GPU out of memory: retrying with batch size %d", self.batch_size)
            return
        warnings.warn("GPU out of memory even for one slice: continuing on the CPU (slower)", stacklevel=2)
        self.device = torch.device("cpu")
        self.model.to(self.device)
        self.batch_size = 16


def _resize_sigmoid(logits: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, h, w) logits -> (B, *size) float32 probabilities (interpolated as logits, then sigmoid)."""
    logits = logits.float()
    if tuple(logits.shape[2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[:, 0]


def _findings_of(report: str, split: bool) -> list[Finding]:
    findings = split_findings(report)  # also rejects an empty report
    if split:
        return findings
    text = tidy_text(report)
    return [Finding(name=findings[0].name if len(findings) == 1 else text[:64], text=text, negative=is_negative(text))]
