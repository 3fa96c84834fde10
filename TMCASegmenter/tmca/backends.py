"""Inference backends: how the engine runs a loaded TMCA network's image encoder and decoder.

- ``eager``: the PyTorch modules themselves (every device; always available).
- ``onnx``: ONNX Runtime on the CPU. The encoder and the decoder are exported once per checkpoint
  to ONNX (``encoder.onnx``, ``decoder.onnx``) and cached beside it in ``<model>/.tmca-cache/onnx``,
  or, for the bundled demo model and when the model folder is read-only, in the user cache (``$TMCA_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/tmca`` or ``~/.cache/tmca``). The cache's ``manifest.json`` records the sha256 of
  the checkpoint's files it was built from and of each exported file; a cache that does not match
  (another checkpoint, a modified or truncated file, another torch or format version) is rebuilt.
- ``openvino``: OpenVINO on the CPU, compiling the same verified ONNX export; its compiled form is
  kept in the export folder (``openvino/``), so later processes load it instead of compiling.
- ``auto``: for a 2D model on the CPU, ``openvino`` when installed, else ``onnx``, else ``eager``;
  ``eager`` on GPUs and for 3D models.

Chosen by measurement (docs/PERFORMANCE.md): on this project's 2-core CPU, ONNX Runtime ran the
demo model's encoder and decoder several times faster than eager PyTorch (channels_last, batch norm
folded), exported in seconds; OpenVINO ran the same export about twice as fast again;
``torch.compile`` (inductor) gained less and compiled for minutes.
The frozen text encoder is exported too (``text.onnx``, dynamic batch and length): OpenVINO encodes
a finding in about 2 ms where eager PyTorch took 12 ms. Its cache key adds the text encoder's name
and the size and modification time of its files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tmca.choices import check_backend
from tmca.errors import TMCAError
from tmca.networks.text_encoder import TextFeatures

log = logging.getLogger(__name__)

CACHE_ENV = "TMCA_CACHE_DIR"
ONNX_FORMAT = "tmca-onnx-4"  # 3: concatenations split, relevance without pixel embeddings; 4: text.onnx
_GRAPHS = ("encoder.onnx", "decoder.onnx")
_TEXT_GRAPH = "text.onnx"
ONNX_OPSET = 17
_FEATURES = ("s2", "f1", "f2", "f3", "f4")
_TEXT = ("tokens", "token_mask", "sentence")


EXPORTED_BACKENDS = {"openvino": "openvino", "onnx": "onnxruntime"}
"""Backends that run the ONNX export -> the Python package each needs, in the order ``auto`` prefers them."""
_PACKAGE_NAMES = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}


def package_available(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def auto_candidates(model: nn.Module, device: torch.device) -> list[str]:
    """The backends ``auto`` tries for this model and device, fastest first; eager is always last."""
    if device.type != "cpu" or model.config.spatial_dims != 2:
        return ["eager"]
    return [name for name, package in EXPORTED_BACKENDS.items() if package_available(package)] + ["eager"]


def resolve_backend(name: str, model: nn.Module, device: torch.device) -> str:
    """The backend ``name`` means for this model and device (``auto`` decided; an impossible request is a TMCAError)."""
    name = check_backend(name)
    if name == "auto":
        return auto_candidates(model, device)[0]
    if name in EXPORTED_BACKENDS:
        if device.type != "cpu":
            raise TMCAError(f"the {name} backend runs on the CPU; use --backend eager on {device.type}")
        if model.config.spatial_dims != 2:
            raise TMCAError(f"the {name} backend takes 2D models; use --backend eager for 3D models")
        package = EXPORTED_BACKENDS[name]
        if not package_available(package):
            raise TMCAError(f"the {name} backend needs {_PACKAGE_NAMES[package]}: pip install {package} (or use --backend eager)")
    return name


class EagerRunner:
    """The PyTorch model as loaded: ``encode(x)`` -> features, ``decode(...)`` -> (logits, last relevance or None)."""

    name = "eager"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.model.encoder(image)

    def decode(self, features: list[torch.Tensor], image: torch.Tensor, text: TextFeatures | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        output = self.model.decode(features, image, text, with_alignment=False)
        return output.logits, output.relevance[-1] if output.relevance else None


# --- ONNX Runtime -------------------------------------------------------------------------------


class _EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.encoder(image))


class _DecoderGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.relevance = bool(model.config.text and model.config.lgte)

    def forward(self, s2, f1, f2, f3, f4, image, *text):
        features = TextFeatures(text[0], text[1], text[2], [False]) if text else None
        output = self.model.decode([s2, f1, f2, f3, f4], image, features, with_alignment=False)
        return (output.logits, output.relevance[-1]) if self.relevance else (output.logits,)


class _TextGraph(nn.Module):
    """The text encoder's transformer: tokenizer outputs (``names``, in that order) -> last hidden state (B, L, d_t)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model.text_encoder.model
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).last_hidden_state


def user_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tmca"


def _checkpoint_identity(model_path: Path) -> dict[str, str]:
    """sha256 of the checkpoint's config and weights, from its verified manifest."""
    from tmca.checkpoint import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE

    files = json.loads((model_path / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
    return {name: files[name]["sha256"] for name in (CONFIG_FILE, WEIGHTS_FILE)}


def _text_encoder_identity(model: nn.Module) -> dict[str, Any] | None:
    """The text encoder's name and the (bytes, modification time) of its folder's files; None for image-only models."""
    from tmca.networks.text_encoder import resolve_text_encoder_path

    if not model.config.text:
        return None
    reference = model.text_encoder.reference
    files = sorted(path for path in resolve_text_encoder_path(reference).iterdir() if path.is_file())
    return {"reference": reference, "files": {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in files}}


def _export_identity(model: nn.Module, model_path: Path) -> dict[str, Any]:
    from tmca import __version__

    return {
        "format": ONNX_FORMAT, "opset": ONNX_OPSET, "torch": torch.__version__, "tmca": __version__,
        "checkpoint": _checkpoint_identity(model_path), "text_encoder": _text_encoder_identity(model),
    }  # fmt: skip


def _cache_candidates(model_path: Path) -> list[Path]:
    from tmca.checkpoint import WEIGHTS_FILE

    from tmca.models import default_model_path

    tag = _checkpoint_identity(model_path)[WEIGHTS_FILE][:16]
    user = user_cache_dir() / "onnx" / f"{model_path.name}-{tag}"
    bundled = default_model_path()
    if bundled is not None and model_path.resolve() == bundled.resolve():
        return [user]  # the bundled demo model is part of the installation (Slicer's Resources): leave its folder as shipped
    return [model_path / ".tmca-cache" / "onnx", user]


def _valid_cache(folder: Path, identity: dict[str, Any]) -> bool:
    from tmca.checkpoint import sha256_of

    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if {k: manifest.get(k) for k in identity} != identity:
        return False
    files = manifest.get("files") or {}
    try:
        graphs_expected = set(files) - {_TEXT_GRAPH} == set(_GRAPHS)  # text.onnx is missing where the text encoder would not export
        return graphs_expected and all(sha256_of(folder / name) == digest for name, digest in files.items())
    except OSError:
        return False


def _export(model: nn.Module, folder: Path, identity: dict[str, Any]) -> None:
    """Write encoder.onnx, decoder.onnx and manifest.json into ``folder`` (a fresh staging folder)."""
    import warnings

    from tmca.checkpoint import sha256_of

    config = model.config
    size = config.image_size
    image = torch.rand(2, config.in_channels, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about Python values taken from shapes: fixed by the model's grid
        features = model.encoder(image)
        batch_axis = {0: "batch"}
        torch.onnx.export(
            _EncoderGraph(model), (image,), str(folder / "encoder.onnx"), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image"], output_names=list(_FEATURES), dynamic_axes={name: batch_axis for name in ("image", *_FEATURES)},
        )  # fmt: skip
        inputs, names, axes = [*features, image], [*_FEATURES, "image"], {name: batch_axis for name in (*_FEATURES, "image")}
        if config.text:
            text = _padded(model.encode_text(["export"]).expand(2), config.max_length)
            inputs += [text.tokens, text.mask, text.sentence]
            names += list(_TEXT)
            axes.update({name: batch_axis for name in _TEXT})
        graph = _DecoderGraph(model)
        outputs = ["logits", "relevance"] if graph.relevance else ["logits"]
        axes.update({name: batch_axis for name in outputs})
        torch.onnx.export(
            graph, tuple(inputs), str(folder / "decoder.onnx"), dynamo=False, opset_version=ONNX_OPSET,
            input_names=names, output_names=outputs, dynamic_axes=axes,
        )  # fmt: skip
    graphs = list(_GRAPHS)
    if config.text and _export_text(model, folder / _TEXT_GRAPH):
        graphs.append(_TEXT_GRAPH)
    files = {name: sha256_of(folder / name) for name in graphs}
    (folder / "manifest.json").write_text(json.dumps({**identity, "files": files}, indent=2, sort_keys=True), encoding="utf-8")


def _export_text(model: nn.Module, path: Path) -> bool:
    """Export the text encoder's transformer to ``path``; False (the text stays in PyTorch) when the exporter fails."""
    import warnings

    batch = model.text_encoder.tokenizer(["export a report"], padding=True, return_tensors="pt")
    names = list(batch)
    axes = {name: {0: "batch", 1: "length"} for name in (*names, "hidden")}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _TextGraph(model, names), tuple(batch[name] for name in names), str(path), dynamo=False, opset_version=ONNX_OPSET,
                input_names=names, output_names=["hidden"], dynamic_axes=axes,
            )  # fmt: skip
    except Exception as error:  # a text encoder the exporter cannot trace: everything else still runs exported
        log.warning("the text encoder %s was not exported (%s: %s); it runs in PyTorch", model.text_encoder.reference, type(error).__name__, error)
        path.unlink(missing_ok=True)
        return False
    return True


def _padded(text: TextFeatures, length: int) -> TextFeatures:
    """Report tokens padded (masked out) to the model's max_length: the traced attention has a fixed key length.

    Masked keys get zero attention weight, so the output is the same as with the report's own length.
    """
    missing = length - text.tokens.shape[1]
    if missing < 0:
        raise ValueError(f"{text.tokens.shape[1]} report tokens exceed the model's max_length {length}")
    tokens = torch.nn.functional.pad(text.tokens, (0, 0, 0, missing))
    mask = torch.nn.functional.pad(text.mask, (0, missing))
    return TextFeatures(tokens.contiguous(), mask.contiguous(), text.sentence.contiguous(), text.truncated)


def onnx_cache(model: nn.Module, model_path: Path) -> Path:
    """The verified ONNX export of this checkpoint: reused when its hashes match, else (re)built."""
    identity = _export_identity(model, model_path)
    candidates = _cache_candidates(model_path)
    for folder in candidates:
        if _valid_cache(folder, identity):
            return folder
    errors = []
    for folder in candidates:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".onnx-", dir=folder.parent))
        except OSError as error:  # a read-only model folder: try the user cache
            errors.append(f"{folder.parent}: {error.strerror or error}")
            continue
        try:
            log.info("exporting the model to ONNX in %s (once per checkpoint)", folder)
            _export(model, staging, identity)
            stale = folder.with_name(f"{folder.name}.stale-{os.getpid()}")
            if folder.exists():
                folder.rename(stale)
            try:
                staging.rename(folder)
            except OSError:
                if not _valid_cache(folder, identity):  # not another process's fresh export
                    raise
            shutil.rmtree(stale, ignore_errors=True)
            return folder
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise TMCAError(f"cannot write the ONNX export of {model_path} ({'; '.join(errors)}); set {CACHE_ENV} to a writable folder or use --backend eager")


class _ExportedRunner:
    """The exported encoder and decoder, with :class:`EagerRunner`'s interface; subclasses run the graphs."""

    name = ""

    def __init__(self, model: nn.Module, model_path: Path) -> None:
        self.folder = onnx_cache(model, model_path)
        self.text = bool(model.config.text)
        self.max_length = int(model.config.max_length)
        self.text_graph = self.folder / _TEXT_GRAPH if self.text and (self.folder / _TEXT_GRAPH).is_file() else None
        """The exported text encoder, None where it stays in PyTorch (an image-only model, or one the exporter could not trace)."""

    def _use_text_export(self, model: nn.Module) -> None:
        """Encode reports with the exported text encoder (call once the subclass can run it)."""
        model.text_encoder.runtime = self._encode_text

    def _encode_text(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(self._run_text({name: _array(value) for name, value in batch.items()}))

    def _run_encoder(self, image: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def _run_text(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The exported text encoder on the tokenizer's outputs -> last hidden state (B, L, d_t)."""
        raise NotImplementedError

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the decoder on the feeds it reads (the exporter drops inputs a decoder does not use)."""
        raise NotImplementedError

    def encode(self, image: torch.Tensor) -> list[np.ndarray]:
        return self._run_encoder(_array(image))

    def decode(self, features: Sequence[np.ndarray], image: torch.Tensor, text: TextFeatures | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        feeds = dict(zip(_FEATURES, features))
        feeds["image"] = _array(image)
        if self.text:
            if text is None:
                raise TMCAError("this model is language-guided: pass the reports")
            text = _padded(text, self.max_length)
            feeds.update(tokens=_array(text.tokens), token_mask=_array(text.mask), sentence=_array(text.sentence))
        outputs = self._run_decoder(feeds)
        return torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]) if len(outputs) > 1 else None


class OnnxRunner(_ExportedRunner):
    """ONNX Runtime sessions for the exported encoder and decoder."""

    name = "onnx"

    def __init__(self, model: nn.Module, model_path: Path, threads: int | None = None) -> None:
        import onnxruntime

        super().__init__(model, model_path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False  # the arena kept ~0.5 GB after the batches: the 512 CT peaked over 2 GB
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would spin on the cores torch needs next
        providers = ["CPUExecutionProvider"]
        self.encoder = onnxruntime.InferenceSession(str(self.folder / "encoder.onnx"), options, providers=providers)
        self.decoder = onnxruntime.InferenceSession(str(self.folder / "decoder.onnx"), options, providers=providers)
        self.decoder_inputs = {node.name for node in self.decoder.get_inputs()}
        if self.text_graph is not None:
            self.text_session = onnxruntime.InferenceSession(str(self.text_graph), options, providers=providers)
            self.text_inputs = [node.name for node in self.text_session.get_inputs()]
            self._use_text_export(model)

    def _run_encoder(self, image: np.ndarray) -> list[np.ndarray]:
        return self.encoder.run(None, {"image": image})

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.decoder.run(None, {name: value for name, value in feeds.items() if name in self.decoder_inputs})

    def _run_text(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.text_session.run(None, {name: feeds[name] for name in self.text_inputs})[0]


class OpenVinoRunner(_ExportedRunner):
    """OpenVINO's CPU plugin compiling the exported encoder and decoder (the compiled form cached in ``openvino/``)."""

    name = "openvino"

    def __init__(self, model: nn.Module, model_path: Path, threads: int | None = None) -> None:
        import openvino

        super().__init__(model, model_path)
        core = openvino.Core()
        compiled = self.folder / "openvino"
        try:
            compiled.mkdir(exist_ok=True)
            core.set_property({"CACHE_DIR": str(compiled)})
        except OSError as error:  # a read-only export folder: compile in every process instead
            log.info("not caching the compiled OpenVINO model in %s: %s", compiled, error.strerror or error)
        settings = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.encoder = core.compile_model(str(self.folder / "encoder.onnx"), "CPU", settings)
        self.decoder = core.compile_model(str(self.folder / "decoder.onnx"), "CPU", settings)
        self.decoder_inputs = [_port_name(port, (*_FEATURES, "image", *_TEXT)) for port in self.decoder.inputs]
        if self.text_graph is not None:
            self.text_model = core.compile_model(str(self.text_graph), "CPU", settings)
            self.text_inputs = [port.get_any_name() for port in self.text_model.inputs]
            self._use_text_export(model)

    def _run_encoder(self, image: np.ndarray) -> list[np.ndarray]:
        outputs = self.encoder(image)
        return [outputs[port] for port in self.encoder.outputs]

    def _run_decoder(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.decoder([feeds[name] for name in self.decoder_inputs])
        return [outputs[port] for port in self.decoder.outputs]

    def _run_text(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.text_model([feeds[name] for name in self.text_inputs])[self.text_model.outputs[0]]


def _port_name(port: Any, known: Sequence[str]) -> str:
    """The export's name of an OpenVINO input port (OpenVINO may add names of its own)."""
    names = port.get_names()
    for name in known:
        if name in names:
            return name
    raise TMCAError(f"the ONNX export has an unexpected input {port.get_any_name()!r}; delete its cache folder to rebuild it")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


RUNNERS = {"onnx": OnnxRunner, "openvino": OpenVinoRunner}


def make_runner(backend: str, model: nn.Module, model_path: Path, device: torch.device) -> EagerRunner | _ExportedRunner:
    """The runner for ``backend``; ``auto`` tries its candidates in turn, falling back when an export or runtime fails."""
    backend = check_backend(backend)
    candidates = auto_candidates(model, device) if backend == "auto" else [resolve_backend(backend, model, device)]
    for name in candidates:
        if name == "eager":
            return EagerRunner(model)
        try:
            return RUNNERS[name](model, model_path)
        except Exception as error:  # an exporter or runtime failure on an unusual model, a cache it cannot write
            if backend != "auto":
                if isinstance(error, TMCAError):
                    raise
                raise TMCAError(f"the {name} backend failed for {model_path}: {type(error).__name__}: {error}; use --backend eager") from error
            log.warning("%s backend unavailable for %s (%s: %s); trying the next", name, model_path, type(error).__name__, error)
    return EagerRunner(model)
