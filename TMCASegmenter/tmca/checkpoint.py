"""Checkpoint folders: ``config.json``, ``model.safetensors`` and ``manifest.json`` (sha256 of each file).

Loading verifies every hash before reading any weight and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tmca import __version__
from tmca.atomic import give_default_permissions
from tmca.config import TMCAConfig
from tmca.errors import TMCAError
from tmca.networks.factory import build_network
from tmca.networks.text_encoder import FrozenTextEncoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "tmca-checkpoint-1"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import monai
    import safetensors
    import transformers

    return {
        "tmca": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "transformers": transformers.__version__,
        "safetensors": getattr(safetensors, "__version__", "unknown"),
        "python": platform.python_version(),
    }


def save_checkpoint(folder: str | Path, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (built by :func:`tmca.networks.factory.build_network`) to ``folder`` (replaced as
    a whole: a reader never sees a half-written checkpoint).

    ``extra`` goes into config.json beside the architecture (e.g. training metrics).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = {"format": FORMAT, "model": model.config.to_dict(), **(extra or {})}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
        manifest = {
            "format": FORMAT,
            "files": {name: {"sha256": sha256_of(staging / name), "bytes": (staging / name).stat().st_size} for name in (CONFIG_FILE, WEIGHTS_FILE)},
            "versions": _versions(),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        give_default_permissions(staging)  # mkdtemp makes 0700
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            folder.rename(backup)
            staging.rename(folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Check that the folder is complete and every file matches its manifest hash; return the manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TMCAError(f"model folder not found: {folder}")
    for name in (CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE):
        if not (folder / name).is_file():
            raise TMCAError(f"model folder {folder} is missing {name}; copy the complete checkpoint folder again")
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise TMCAError(f"model folder {folder}: {MANIFEST_FILE} is unreadable ({error}); copy the checkpoint again") from error
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        expected = files.get(name, {}).get("sha256")
        if expected is None:
            raise TMCAError(f"model folder {folder}: the manifest has no hash for {name}; copy the checkpoint again")
        if sha256_of(folder / name) != expected:
            raise TMCAError(
                f"model folder {folder}: {name} does not match its sha256 in {MANIFEST_FILE} (truncated or modified); "
                "copy the checkpoint again or retrain"
            )
    return manifest


def checkpoint_id(folder: str | Path) -> str:
    """The sha256 of a verified checkpoint's manifest.json: one id for its config and weights together."""
    verify_checkpoint(folder)
    return sha256_of(Path(folder) / MANIFEST_FILE)


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """The verified config.json of a checkpoint (architecture under ``model``)."""
    verify_checkpoint(folder)
    return json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))


def load_checkpoint(folder: str | Path, device: torch.device | str = "cpu", text_encoder: FrozenTextEncoder | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Verify and load a checkpoint; returns the model in eval mode on ``device`` and its config.json."""
    config_json = read_checkpoint_config(folder)
    if config_json.get("format") != FORMAT:
        raise TMCAError(f"model folder {folder}: unsupported checkpoint format {config_json.get('format')!r}")
    config = TMCAConfig.from_saved(config_json["model"])
    pretrained, config.encoder_pretrained = config.encoder_pretrained, False  # the weights come from the checkpoint
    try:
        model = build_network(config, text_encoder)
    except (ValueError, OSError) as error:  # the networks' library errors, for the user
        raise TMCAError(f"model folder {folder}: cannot build its network ({error})") from error
    finally:
        config.encoder_pretrained = pretrained  # the model keeps this config: it says how the model was trained
    try:
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
        model.load_trainable_state_dict(state)
    except (KeyError, RuntimeError, OSError) as error:
        raise TMCAError(f"model folder {folder}: weights do not fit the architecture in {CONFIG_FILE} ({error})") from error
    return model.to(device).eval(), config_json


def transfer_weights(model: nn.Module, folder: str | Path) -> tuple[int, int, list[str]]:
    """Start ``model`` from the weights of checkpoint ``folder`` wherever a tensor's name and shape match.

    For adding parts to a trained model (click inputs, a finer decoder): everything that fits is
    copied, the rest keeps its fresh initialisation. Returns (parameters copied, parameters in all,
    names of the tensors that start fresh). TMCAError when the image or text encoders differ, or
    when nothing fits.
    """
    config_json = read_checkpoint_config(folder)
    saved = TMCAConfig.from_saved(config_json["model"])
    for field in ("architecture", "encoder", "text_encoder", "in_channels"):
        if getattr(saved, field) != getattr(model.config, field):
            raise TMCAError(
                f"cannot start from {folder}: its {field} is {getattr(saved, field)!r}, the model being trained has "
                f"{getattr(model.config, field)!r}; give the same {field} or train without --init-weights"
            )
    try:
        state = load_file(str(Path(folder) / WEIGHTS_FILE))
    except (RuntimeError, OSError) as error:
        raise TMCAError(f"cannot read the weights of {folder}: {error}") from error
    current = model.trainable_state_dict()
    taken = {name: state[name] for name, tensor in current.items() if name in state and state[name].shape == tensor.shape}
    if not taken:
        raise TMCAError(f"no weight of {folder} fits the model being trained; train without --init-weights")
    model.load_trainable_state_dict({**current, **taken})
    fresh = [name for name in current if name not in taken]
    return sum(current[name].numel() for name in taken), sum(tensor.numel() for tensor in current.values()), fresh
