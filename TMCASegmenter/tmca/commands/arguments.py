"""Arguments several commands share, checked by the same validators the Python API uses.

A value the validators of :mod:`tmca.choices` refuse becomes an argparse usage error (exit 2,
before any work) with the validator's own message.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tmca.choices import BACKENDS, DEVICES, MODALITIES, PLANES, check_backend, check_device, check_modality, check_plane
from tmca.errors import TMCAError


def argument_type(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse ``type`` that runs ``check`` and reports its TMCAError as a usage error."""

    def convert(text: str) -> str:
        try:
            return check(text)
        except TMCAError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = check.__name__.removeprefix("check_")
    return convert


def add_device(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument("--device", default=default, type=argument_type(check_device), metavar="DEVICE",
                        help=f"one of {', '.join(DEVICES)}, or cuda:N (default {default or 'auto'})")


def add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", type=argument_type(check_backend), metavar="BACKEND",
                        help=f"one of {', '.join(BACKENDS)} (default auto: for 2D models on the CPU OpenVINO, else ONNX Runtime, "
                             "running an export made once per model and cached; eager: PyTorch)")


def add_modality(parser: argparse.ArgumentParser, help: str, allowed: tuple[str, ...] = MODALITIES, default: str | None = None) -> None:
    parser.add_argument("--modality", default=default, type=argument_type(lambda text: check_modality(text, allowed)), metavar="MODALITY",
                        help=f"{help}: one of {', '.join(allowed)} (any case)")


def add_plane(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--plane", type=argument_type(check_plane), metavar="PLANE", help=f"{help}: one of {', '.join(PLANES)}")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("json", "bar"), default="bar", help="json: one JSON object per line on stdout")


def add_resize_large(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resize-large", action="store_true",
                        help="squeeze slices larger than the model's input size to it instead of sliding a window of that size "
                             "over them at native resolution (the default for models trained on native-resolution crops; "
                             "models trained on resized slices always resize, so for them this changes nothing)")


def large_images_of(args: argparse.Namespace) -> str | None:
    """The ``Segmenter(large_images=...)`` the command line asks for: "resize", or None (as the model was trained)."""
    return "resize" if getattr(args, "resize_large", False) else None
