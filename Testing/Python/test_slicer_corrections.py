"""Save correction (issue #14, panel part): which findings are saved, and what reaches tmca.site.

The user's segmentation is the model of Slicer's segmentation storage in slicer_segmentation_model.py;
the site dataset is written for real by tmca.site and read back.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_segmentation_model import (SHAPE, ModelNode, ModelSegmentation, ModelTransforms,
                                       array_from_segment_binary_labelmap as read_mask,
                                       update_segment_binary_labelmap_from_array as write_mask)
from TMCASegmenterLib import corrections, geometry, results, segments
from TMCASegmenterLib.results import ResultRow
from tmca import site
from tmca.errors import TMCAError
from tmca.protocol import FindingRecord, segment_id

MODULE_DIR = Path(__file__).resolve().parents[2] / "TMCASegmenter"
IJK_TO_RAS = geometry.ijk_to_ras_from_geometry((-20.0, 35.5, 7.25), (0.8, 0.9, 2.5),
                                               sitk.VersorTransform((0.1, 0.3, 0.9), 0.4).GetMatrix())


def _box(k, j, i, size=3) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[k:k + 2, j:j + size, i:i + size] = 1
    return mask


def _scan() -> np.ndarray:
    return np.random.default_rng(4).integers(-1000, 1000, size=SHAPE).astype(np.int16)


class Scene:
    """A scan, and the user's segmentation after an engine result was imported into it (beside a liver segment)."""

    def __init__(self) -> None:
        transforms = ModelTransforms()
        self.volume = ModelNode(transforms)
        self.segmentation = ModelNode(transforms, ModelSegmentation())
        liverId = self.segmentation.GetSegmentation().AddEmptySegment("liver", "liver")
        write_mask(_box(0, 0, 0, size=5), self.segmentation, liverId, self.volume)
        source = ModelSegmentation()
        masks = {segment_id(0): ("nodule", _box(3, 6, 6)), segment_id(1): ("effusion", _box(1, 8, 1))}
        source.add_written_layer(masks)
        self.findings = [
            FindingRecord("nodule", text="Nodule in the left upper lobe.", segment_id=segment_id(0), label_value=1),
            FindingRecord("effusion", text="Small right pleural effusion.", segment_id=segment_id(1), label_value=2),
        ]
        loaded = ModelNode(transforms, source)
        imported = segments.import_findings(loaded, self.segmentation, self.volume, self.findings, read_mask, write_mask)
        self.segmentIds = [newId for _, newId in imported]
        self.rows = results.result_rows(self.findings, self.segmentIds)

    def read(self, segmentId):
        if self.segmentation.GetSegmentation().GetSegment(segmentId) is None:
            return None
        return read_mask(self.segmentation, segmentId, self.volume)

    def correct(self, row: int, mask: np.ndarray) -> None:
        write_mask(mask, self.segmentation, self.segmentIds[row], self.volume)


def _manifest(folder: Path) -> list[dict]:
    with open(folder / site.MANIFEST, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


# --------------------------------------------------------------------------- which findings


def test_the_selected_rows_are_saved_with_their_own_segments_and_sentences():
    scene = Scene()
    chosen = corrections.chosen_corrections(scene.rows, [1])
    assert chosen == [corrections.Correction(scene.segmentIds[1], "Small right pleural effusion.", "effusion")]
    assert scene.segmentIds[1] != scene.findings[1].segment_id  # the user's segment, not the engine file's id


def test_no_selection_saves_every_finding_of_the_result():
    scene = Scene()
    chosen = corrections.chosen_corrections(scene.rows, [])
    assert [c.segment_id for c in chosen] == scene.segmentIds
    assert [c.report for c in chosen] == [f.text for f in scene.findings]


def test_a_finding_without_a_sentence_is_saved_under_its_name():
    row = ResultRow(FindingRecord("mass"), "Segment_3", ("mass", "1.00", "1"))
    assert corrections.chosen_corrections([row], [0])[0].report == "mass"


def test_findings_of_absence_are_never_saved():
    scene = Scene()
    absent = ResultRow(FindingRecord("No effusion", text="No pleural effusion."), "", ("No effusion", "absent"), absent=True)
    rows = scene.rows + [absent]
    assert [c.segment_id for c in corrections.chosen_corrections(rows, [])] == scene.segmentIds
    with pytest.raises(TMCAError, match="finding of absence"):
        corrections.chosen_corrections(rows, [2])
    with pytest.raises(TMCAError, match="no finding to save"):
        corrections.chosen_corrections([], [])


# --------------------------------------------------------------------------- what is saved


def test_saving_writes_the_corrected_mask_on_the_scans_grid(tmp_path):
    scene = Scene()
    corrected = _box(3, 6, 6) | _box(4, 9, 9, size=2)  # the user grew the nodule
    scene.correct(0, corrected)
    scan = _scan()
    image = corrections.scan_image(scan, IJK_TO_RAS)

    saved = corrections.save_corrections(str(tmp_path), image, corrections.chosen_corrections(scene.rows, [0]),
                                         scene.read, case="1.2.840.99.1")

    assert [(e.report, e.case) for e in saved] == [("Nodule in the left upper lobe.", "1.2.840.99.1")]
    rows = _manifest(tmp_path)
    assert [(r["report"], r["case"], r["split"]) for r in rows] == [("Nodule in the left upper lobe.", "1.2.840.99.1", saved[0].split)]
    mask = sitk.ReadImage(str(tmp_path / rows[0]["mask"]))
    stored = sitk.ReadImage(str(tmp_path / rows[0]["image"]))
    assert np.array_equal(sitk.GetArrayFromImage(mask), corrected)
    assert np.array_equal(sitk.GetArrayFromImage(stored), scan)
    assert geometry.same_geometry(geometry.ijk_to_ras_matrix(stored), IJK_TO_RAS)
    assert geometry.same_geometry(geometry.ijk_to_ras_matrix(mask), IJK_TO_RAS)


def test_saving_every_finding_keeps_one_image_and_one_mask_each(tmp_path):
    scene = Scene()
    image = corrections.scan_image(_scan(), IJK_TO_RAS)
    saved = corrections.save_corrections(str(tmp_path), image, corrections.chosen_corrections(scene.rows, []),
                                         scene.read, case="chest")
    rows = _manifest(tmp_path)
    assert len(saved) == len(rows) == 2 and len({r["image"] for r in rows}) == 1
    for row, expected in zip(rows, [_box(3, 6, 6), _box(1, 8, 1)]):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / row["mask"]))), expected)
    assert corrections.dataset_summary(str(tmp_path)) == corrections.count_text(site.split_counts(tmp_path))


def test_a_deleted_segment_saves_nothing(tmp_path):
    scene = Scene()
    del scene.segmentation.GetSegmentation().segments[scene.segmentIds[1]]
    image = corrections.scan_image(_scan(), IJK_TO_RAS)
    with pytest.raises(TMCAError, match="'effusion': its segment is no longer in the segmentation"):
        corrections.save_corrections(str(tmp_path / "site"), image, corrections.chosen_corrections(scene.rows, []),
                                     scene.read, case="chest")
    assert not (tmp_path / "site").exists()


def test_an_empty_segment_saves_nothing(tmp_path):
    scene = Scene()
    scene.correct(1, np.zeros(SHAPE, dtype=np.uint8))
    image = corrections.scan_image(_scan(), IJK_TO_RAS)
    with pytest.raises(TMCAError, match="'effusion': the corrected segment is empty"):
        corrections.save_corrections(str(tmp_path / "site"), image, corrections.chosen_corrections(scene.rows, []),
                                     scene.read, case="chest")
    assert not (tmp_path / "site").exists()


def test_an_unwritable_folder_is_the_engines_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    scene = Scene()
    image = corrections.scan_image(_scan(), IJK_TO_RAS)
    with pytest.raises(TMCAError, match="cannot create the site dataset"):
        corrections.save_corrections(str(blocker / "site"), image, corrections.chosen_corrections(scene.rows, [0]),
                                     scene.read, case="chest")


def test_a_mask_on_another_grid_is_refused_by_the_engine(tmp_path):
    scene = Scene()
    image = corrections.scan_image(_scan()[:, :, :-1], IJK_TO_RAS)
    with pytest.raises(TMCAError, match="resample it onto the scan"):
        corrections.save_corrections(str(tmp_path), image, corrections.chosen_corrections(scene.rows, [0]),
                                     scene.read, case="chest")


def test_scan_image_keeps_voxels_and_an_oblique_geometry():
    scan = _scan()
    image = corrections.scan_image(scan, IJK_TO_RAS)
    assert np.array_equal(sitk.GetArrayFromImage(image), scan)
    assert geometry.same_geometry(geometry.ijk_to_ras_matrix(image), IJK_TO_RAS, tolerance=1e-6)


# --------------------------------------------------------------------------- settings, case id, counts


def test_the_default_folder_is_beside_slicers_settings_file():
    settings = os.path.join("home", "me", ".config", "slicer.org", "Slicer.ini")
    assert Path(corrections.default_dataset_folder(settings)) == Path("home/me/.config/slicer.org/TMCASegmenter/SiteDataset")


def test_the_case_is_the_series_uid_else_the_volume_name():
    assert corrections.case_id("1.2.826.0.1.3680043.8.498.1", "3: CT chest") == "1.2.826.0.1.3680043.8.498.1"
    assert corrections.case_id("", "CT chest") == "CT chest"
    assert corrections.case_id(None, " CT chest ") == "CT chest"


def test_count_text():
    assert corrections.count_text({"Train": 0, "Val": 0}) == "No examples yet"
    assert corrections.count_text({"Train": 1, "Val": 0}) == "1 example (1 Train, 0 Val)"
    assert corrections.count_text({"Train": 10, "Val": 2}) == "12 examples (10 Train, 2 Val)"


def test_the_count_of_a_new_or_damaged_dataset(tmp_path):
    assert corrections.dataset_summary(str(tmp_path / "not yet")) == "No examples yet"
    (tmp_path / site.MANIFEST).write_text("not,a,manifest\n")
    assert corrections.dataset_summary(str(tmp_path)).startswith("Site dataset unreadable: ")


def test_the_site_dataset_and_its_helper_load_without_torch():
    """Save correction runs tmca.site inside Slicer's process, where torch may not be installed."""
    code = ("import sys, tmca.site, TMCASegmenterLib.corrections; "
            "print(sorted(m for m in ('torch', 'slicer', 'qt', 'vtk') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(MODULE_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
