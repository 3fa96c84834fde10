"""The command line's registry of commands, and the registries every command and the API share."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tmca import cli
from tmca.choices import DEVICES, MODALITIES, PLANES, check_device, check_modality, check_plane
from tmca.errors import TMCAError
from tmca.formats import (
    READABLE_SUFFIXES,
    WRITABLE_VOLUME_SUFFIXES,
    detached_data_files,
    is_volume_file,
    strip_suffix,
    suffix_of,
)


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_every_command_is_registered(name, capsys):
    command = name.replace("_", "-")
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--help"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tmca {command}")


def test_a_missing_command_module_is_an_error_not_a_silent_skip(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="tmca.commands.no_such_command"):
        cli.build_parser()


def test_the_registries_spell_each_value_once():
    assert DEVICES == ("auto", "cpu", "cuda", "mps")
    assert MODALITIES == ("CT", "MR", "US", "XR", "OT")
    assert PLANES == ("axial", "coronal", "sagittal")
    assert [check_device(" CUDA:1 "), check_device(None), check_device("MPS")] == ["cuda:1", "auto", "mps"]
    assert [check_modality("ct"), check_modality("CR"), check_modality("Mg")] == ["CT", "XR", "XR"]
    assert check_plane("Sagittal") == "sagittal"
    for check, value in ((check_device, "cuda:x"), (check_modality, "PET"), (check_plane, "oblique")):
        with pytest.raises(TMCAError, match=repr(value)):
            check(value)


def test_the_api_and_the_cli_refuse_a_device_with_the_same_message(tmp_path, capsys, tiny_model_dir):
    from tmca.inference import Segmenter

    with pytest.raises(TMCAError) as refused:
        Segmenter(tiny_model_dir, device="quantum")
    image = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 8, 8).astype(np.float32)), str(image))
    with pytest.raises(SystemExit):
        cli.main(["segment", str(image), "--report", "Mass.", "--output", str(tmp_path / "o.seg.nrrd"), "--device", "quantum"])
    assert capsys.readouterr().err.strip().endswith(f"argument --device: {refused.value}")


def test_synth_takes_modalities_in_any_case(tmp_path, capsys):
    assert cli.main(["synth", "--output", str(tmp_path / "a"), "--cases", "1", "--modality", "us", "--size", "64"]) == 0
    assert cli.main(["synth", "--output", str(tmp_path / "b"), "--cases", "1", "--modality", "US", "--size", "64"]) == 0
    assert (tmp_path / "a" / "synth.json").read_bytes() == (tmp_path / "b" / "synth.json").read_bytes()
    with pytest.raises(SystemExit):
        cli.main(["synth", "--output", str(tmp_path / "c"), "--modality", "OT"])
    assert "unknown modality 'OT'; use one of CT, MR, US, XR" in capsys.readouterr().err


@pytest.mark.parametrize("name, suffix, stem", [
    ("Brain.NII.GZ", ".nii.gz", "Brain"), ("case.seg.nrrd", ".seg.nrrd", "case"), ("sub/scan.nhdr", ".nhdr", "sub/scan"),
    ("x.MHD", ".mhd", "x"), ("slide.tiff", ".tiff", "slide"), ("notes.txt", "", "notes.txt"), ("scan.raw.gz", "", "scan.raw.gz"),
])
def test_suffixes(name, suffix, stem):
    assert (suffix_of(name), strip_suffix(name)) == (suffix, stem)


def test_every_writable_volume_format_is_readable_and_detached_headers_name_their_data(tmp_path):
    assert set(WRITABLE_VOLUME_SUFFIXES) <= set(READABLE_SUFFIXES)
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    sitk.WriteImage(image, str(tmp_path / "a.nhdr"), useCompression=True)
    sitk.WriteImage(image, str(tmp_path / "b.mhd"))
    sitk.WriteImage(image, str(tmp_path / "c.nrrd"))
    assert detached_data_files(tmp_path / "a.nhdr") == [tmp_path / "a.raw.gz"]
    assert detached_data_files(tmp_path / "b.mhd") == [tmp_path / "b.raw"]
    assert detached_data_files(tmp_path / "c.nrrd") == []
    assert [is_volume_file(tmp_path / name) for name in ("a.nhdr", "a.raw.gz", "b.mhd", "b.raw", "x.seg.nrrd")] == [
        True, False, True, False, False]
