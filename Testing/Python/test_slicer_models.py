"""TMCASegmenterLib.models and commands.finetune_command: the panel's "Improve model", run on real engine output.

The engine's own finetune (through the exact command line the panel builds, in a BackgroundProcess)
writes the folders; the deterministic bases of test_finetune make one run promoted and one refused.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import pytest

from TMCASegmenterLib import commands, models
from TMCASegmenterLib.process import BackgroundProcess
from test_finetune import _base, _site
from tmca.checkpoint import checkpoint_id

MODULE_DIR = Path(commands.__file__).resolve().parents[1]


def _run_finetune(base: Path, site: Path, output: Path, *extra: str) -> BackgroundProcess:
    args = commands.finetune_command(sys.executable, base, site, output, minutes=1, device="cpu")
    args += ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", *extra]
    process = BackgroundProcess(args, env=commands.child_environment(MODULE_DIR)).start()
    process.wait(timeout=300)
    return process


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[BackgroundProcess, Path, Path]]:
    root = tmp_path_factory.mktemp("improve")
    blind, everything = _base(root / "blind", -1000.0), _base(root / "everything", 1000.0)
    lesions, whole = _site(root / "lesions", False), _site(root / "whole", True)
    promoted = models.new_model_folder(lesions)
    refused = models.new_model_folder(whole)
    return {"promoted": (_run_finetune(blind, lesions, promoted, "--lr", "1e-3"), promoted, blind),
            "refused": (_run_finetune(everything, whole, refused, "--lr", "1e4"), refused, everything)}


def test_finetune_command_line(tmp_path):
    args = commands.finetune_command("py", tmp_path, "site", "new", minutes=2.5, device="cuda")
    assert args == ["py", "-m", "tmca.cli", "finetune", "--model", str(tmp_path), "--data", "site", "--output", "new",
                    "--minutes", "2.5", "--device", "cuda", "--progress", "json"]
    assert "--model" not in commands.finetune_command("py", "", "site", "new")  # the bundled demo model


@pytest.mark.parametrize("kwargs, message", [({"device": "tpu"}, "unknown device"), ({"minutes": 0}, "positive"),
                                             ({"base_model": "/no/such/model"}, "does not exist")])
def test_finetune_command_rejects_bad_options(kwargs, message):
    options = {"base_model": None, "minutes": 5.0, "device": "auto", **kwargs}
    with pytest.raises(Exception, match=message):
        commands.finetune_command("py", options["base_model"], "site", "new", options["minutes"], options["device"])


def test_finetune_command_is_accepted_by_the_engine_cli(tmp_path):
    from tmca.cli import build_parser

    parsed = build_parser().parse_args(commands.finetune_command("py", tmp_path, "site", "new", 3, "mps")[3:])
    assert (parsed.command, parsed.model, parsed.data, parsed.output, parsed.minutes, parsed.device, parsed.progress) == (
        "finetune", str(tmp_path), Path("site"), Path("new"), 3.0, "mps", "json")


def test_new_model_folder_is_fresh_and_beside_the_site_dataset(tmp_path):
    clock = lambda: datetime(2026, 12, 3, 15, 10, 0)  # noqa: E731
    first = models.new_model_folder(tmp_path / "site", clock)
    assert first == tmp_path / "site" / "models" / "site-20261203-151000" and first.parent.is_dir() and not first.exists()
    first.mkdir()
    second = models.new_model_folder(tmp_path / "site", clock)
    assert second.name == "site-20261203-151000-2" and not second.exists()


def test_a_promoted_run_reads_as_promoted_and_its_label_shows_lineage(runs):
    process, output, base = runs["promoted"]
    assert process.returncode == 0, process.stderr_tail
    promoted, message = models.finetune_outcome(process.returncode, output)
    report = json.loads((output / "finetune.json").read_text())
    assert promoted is True and message.startswith("promoted:")
    assert f"{report['new']['val']['dice']:.4f} vs {report['base']['val']['dice']:.4f}" in message
    label = models.model_label(output)
    assert label == (f"{output.name} (from {base.name} {checkpoint_id(base)[:8]}, "
                     f"Val Dice {report['new']['val']['dice']:.2f} vs 0.00)")


def test_a_refused_run_says_by_how_much_and_is_not_a_model(runs):
    process, output, _ = runs["refused"]
    assert process.returncode == 1, process.stderr_tail
    promoted, message = models.finetune_outcome(process.returncode, output)
    report = json.loads((output / "finetune.json").read_text())
    assert promoted is False
    assert message.startswith(f"not promoted: worse than the current model by {-report['delta_dice']:.4f}")
    assert "not promoted" in models.model_label(output)


def test_labels_of_the_demo_a_scratch_model_and_a_non_model(runs, tmp_path):
    _, _, base = runs["promoted"]
    assert models.model_label(None) == models.model_label("") == "bundled demo model"
    assert models.model_label(base) == f"{base.name} (trained from scratch)"
    assert "not a model folder" in models.model_label(tmp_path)


def test_a_failed_or_unreadable_run_is_not_promoted(tmp_path):
    assert models.finetune_outcome(2, tmp_path) == (False, f"fine-tuning failed (exit code 2); no model was written to {tmp_path}")
    assert models.finetune_outcome(0, tmp_path)[0] is False  # exit 0 but no finetune.json
    (tmp_path / "finetune.json").write_text('{"promoted": true}')
    promoted, message = models.finetune_outcome(0, tmp_path)
    assert promoted is False and "unreadable" in message


def test_the_logic_improves_a_model_and_the_panel_switches_to_it(tmp_path):
    """The module itself (with stand-ins for slicer and qt): Logic.improveModel runs the engine, the widget offers the model."""
    from unittest import mock

    from fake_slicer import slicer_module

    base, site = _base(tmp_path / "blind", -1000.0), _site(tmp_path / "site", False)
    output = models.new_model_folder(site)
    with slicer_module() as module:
        logic = module.TMCASegmenterLogic()
        completed = []
        with mock.patch.object(module, "enginePython", return_value=sys.executable):
            promoted, message = logic.improveModel(str(base), str(site), str(output), minutes=0.05, device="cpu",
                                                   completedCallback=lambda *args: completed.append(args))
        assert not logic.isRunning and not logic.isImproving
        assert promoted is True and message.startswith("promoted:") and completed == [(True, message, str(output))]
        assert (output / "config.json").is_file()

        widget = module.TMCASegmenterWidget()
        widget.logic, widget.ui, widget._parameterNode = logic, mock.MagicMock(), mock.MagicMock()
        widget.ui.modelSourceComboBox.currentIndex = 0
        module.slicer.modules = mock.MagicMock()
        module.slicer.util.confirmYesNoDisplay = mock.MagicMock(return_value=True)
        widget._onImproved(True, message, str(output))
        assert widget.ui.statusLabel.text == message
        assert widget.ui.improveModelButton.enabled is True and widget.ui.improveModelButton.text == "Improve model"
        assert widget.ui.modelSourceComboBox.currentIndex == 1 and widget.ui.modelPathLineEdit.currentPath == str(output)
        assert widget._parameterNode.modelPath == str(output)
        assert widget.ui.modelPathLineEdit.toolTip == models.model_label(output) and "from blind" in models.model_label(output)

        widget._parameterNode.modelPath = ""
        widget.ui.modelSourceComboBox.currentIndex = 0
        module.slicer.util.confirmYesNoDisplay = mock.MagicMock(return_value=False)
        widget._onImproved(True, message, str(output))
        assert widget._parameterNode.modelPath == "" and widget.ui.modelSourceComboBox.currentIndex == 0
        module.slicer.util.confirmYesNoDisplay.reset_mock()
        widget._onImproved(False, "not promoted: worse", str(output))
        module.slicer.util.confirmYesNoDisplay.assert_not_called()
