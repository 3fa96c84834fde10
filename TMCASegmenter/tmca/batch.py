"""Segment a whole study folder: one case per image file or DICOM series, resumable and shardable.

``run_batch(study_dir, output_dir, reports=...)`` finds the cases, finds each case's report (a
reports CSV, a dict, or a ``<case>.txt`` sidecar), loads the model once and writes, per case,
``<case>.seg.nrrd`` (and ``<case>.probability.nrrd``) atomically into ``output_dir``. After every
case it rewrites ``summary.csv`` and ``summary.json`` (``summary-shard-I-of-N.*`` for a shard), so
an interrupted run leaves a true summary. One failing case is recorded and the run goes on.

Resuming: after a case's outputs are written, ``<output_dir>/.tmca-batch/<case>.json`` records
the sha256 of its input files, of its report and of the settings (model manifest, threshold). A
rerun skips a case whose outputs exist and whose three hashes are unchanged.

Heavy modules (torch, SimpleITK, pydicom) are imported where they are needed: case ids, reports
CSVs and summaries (reading, writing, merging) need none of them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tmca.atomic import write_text_atomic
from tmca.errors import CancelledError, TMCAError
from tmca.formats import detached_data_files, is_dicom_name, is_volume_file, strip_suffix
from tmca.textio import read_text_file

STATUSES = ("ok", "failed", "no-report", "skipped")
COLUMNS = (
    "case", "input", "series_uid", "report", "status", "error", "findings", "volume_ml", "components",
    "negative_findings", "terminology", "checks", "disagreements", "seconds",
    "output", "probability", "dicom_seg", "input_sha256", "report_sha256", "settings_sha256",
)  # fmt: skip
"""Summary columns, in order; extra columns of the reports CSV follow them. ``terminology`` and
``checks`` hold one text per finding (:func:`tmca.reconcile.checks_text`); ``disagreements``
counts the case's checks that disagree."""
LIST_COLUMNS = ("findings", "volume_ml", "components", "negative_findings", "terminology", "checks")
"""Columns holding one value per finding: lists in summary.json, ``"; "``-joined in summary.csv."""
SUMMARY_FORMAT = "tmca-batch-summary-1"
STATE_FOLDER = ".tmca-batch"
PROBABILITY_SUFFIX = ".probability.nrrd"

ProgressCallback = Callable[..., None]
"""``progress(done, total, stage, **extra)``, as :mod:`tmca.progress` objects take it."""

_UNSAFE_CHARACTERS = re.compile(r"[^\w.-]+")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_MAX_ID_BYTES = 120


# ---------------------------------------------------------------------------------------------
# Case ids, cases and reports


def safe_case_id(name: str) -> str:
    """A file-name-safe case id: letters, digits, ``_``, ``.`` and ``-`` only.

    Runs of other characters (``/``, ``\\``, spaces, ``:``) become ``_``; leading and trailing
    dots, dashes and underscores go, so ``"../../etc/x"`` becomes ``"etc_x"`` and no id can leave
    the output folder. Windows device names get a leading ``_``; over-long ids are shortened and
    end with a hash of the name; a name with nothing usable becomes ``case_<hash>``.
    """
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    safe = _UNSAFE_CHARACTERS.sub("_", name).strip("._-")
    if not safe:
        return f"case_{digest}"
    if safe.split(".")[0].upper() in _WINDOWS_RESERVED:
        safe = f"_{safe}"
    if len(safe.encode("utf-8")) > _MAX_ID_BYTES:
        safe = safe.encode("utf-8")[: _MAX_ID_BYTES - 9].decode("utf-8", "ignore").rstrip("._-") + f"_{digest}"
    return safe


@dataclass(frozen=True)
class Case:
    """One thing to segment: an image file, a DICOM series, or a report without an image.

    ``source`` is what :func:`tmca.imageio.load_image` reads (with ``series_uid`` for a series
    folder); ``inputs`` are the files whose bytes identify the case; ``report_files`` are the
    sidecar reports looked for, in order. ``problem`` says why the case cannot be segmented.
    """

    id: str
    input: str
    source: Path | None = None
    inputs: tuple[Path, ...] = ()
    series_uid: str | None = None
    report_files: tuple[Path, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class Report:
    """A case's report text, where it came from, and the reports CSV's other columns."""

    text: str
    origin: str
    extras: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None


def find_cases(study_dir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Case]:
    """Every volume file (NIfTI, NRRD/NHDR, MHA/MHD) and DICOM series under ``study_dir``, sorted by case id.

    ``exclude`` (the output folder when it lies inside the study) is not searched; hidden files
    and folders, Slicer segmentations (``*.seg.nrrd``) and the data files of ``.nhdr``/``.mhd``
    headers are not cases (the header is, and its data file is one of its inputs). A DICOM series is found
    by its series UID wherever its files lie; a ``.dcm`` file that belongs to no readable series
    is a case of its own. Cases sharing an id (compared case-insensitively) get a ``problem``.
    """
    study = Path(study_dir).resolve()
    files = list(_walk_files(study, Path(exclude).resolve() if exclude else None))
    image_cases = [_file_case(study, path) for path in files if is_volume_file(path)]
    series_cases, series_files = _series_cases(study, set(files))
    loose_dicoms = [path for path in files if is_dicom_name(path) and path not in series_files]
    cases = image_cases + series_cases + [_file_case(study, path) for path in loose_dicoms]
    return sorted(_flag_shared_ids(cases), key=lambda case: (case.id, case.input))


def _walk_files(study: Path, exclude: Path | None) -> Iterator[Path]:
    for directory, folders, names in os.walk(study):
        here = Path(directory)
        folders[:] = sorted(name for name in folders if not name.startswith(".") and here / name != exclude)
        yield from (here / name for name in sorted(names) if not name.startswith("."))


def _relative(path: Path, study: Path) -> str:
    return path.relative_to(study).as_posix()


def _file_case(study: Path, path: Path) -> Case:
    stem = strip_suffix(path.name)
    case_id = safe_case_id(stem)
    return Case(
        id=case_id,
        input=_relative(path, study),
        source=path,
        inputs=(path, *detached_data_files(path)),
        report_files=_unique_paths(path.parent / f"{stem}.txt", study / f"{case_id}.txt"),
    )


def _series_cases(study: Path, searched: set[Path]) -> tuple[list[Case], set[Path]]:
    """One case per DICOM series of the ``searched`` files; its id is its folder's path joined with ``_``."""
    from tmca.imageio import find_dicom_series

    with _quiet_itk():
        found = find_dicom_series(study)
    series = {uid: files for uid, names in found.items() if (files := [Path(name) for name in names if Path(name) in searched])}
    by_folder: dict[Path, list[str]] = {}
    for uid, files in series.items():
        by_folder.setdefault(Path(os.path.commonpath([f.parent for f in files])), []).append(uid)
    cases = []
    for folder, uids in by_folder.items():
        name = "_".join(folder.relative_to(study).parts) or study.name
        suffixes = _series_suffixes(uids, series) if len(uids) > 1 else {uids[0]: ""}
        for uid in uids:
            cases.append(_series_case(study, folder, f"{name}{suffixes[uid]}", uid, series[uid]))
    return cases, {path for files in series.values() for path in files}


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK's "No Series were found" warning, printed for every folder without DICOM files."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _series_suffixes(uids: list[str], series: Mapping[str, list[Path]]) -> dict[str, str]:
    """``_<SeriesNumber>`` per series of a folder holding several (``_<UID>`` where numbers repeat)."""
    import pydicom

    numbers = {uid: str(pydicom.dcmread(series[uid][0], stop_before_pixels=True, force=True).get("SeriesNumber", "")) for uid in uids}
    unique = len(set(numbers.values())) == len(numbers) and all(numbers.values())
    return {uid: f"_{numbers[uid] if unique else uid}" for uid in uids}


def _series_case(study: Path, folder: Path, name: str, uid: str, files: list[Path]) -> Case:
    case_id = safe_case_id(name)
    single = len(files) == 1
    return Case(
        id=case_id,
        input=_relative(files[0] if single else folder, study),
        source=files[0] if single else folder,
        inputs=tuple(sorted(files)),
        series_uid=uid,
        report_files=_unique_paths(folder / f"{case_id}.txt", study / f"{case_id}.txt"),
    )


def _unique_paths(*paths: Path) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(paths))


def _flag_shared_ids(cases: list[Case]) -> list[Case]:
    """Cases whose ids are equal ignoring case (one output file on Windows or macOS) cannot run."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.id.casefold(), []).append(case)
    flagged = []
    for group in groups.values():
        inputs = ", ".join(case.input for case in group)
        problem = f"case id {group[0].id!r} is shared by {inputs}; rename them so that each case has its own id"
        flagged += group if len(group) == 1 else [replace(case, problem=problem) for case in group]
    return flagged


def read_reports_csv(path: str | os.PathLike) -> dict[str, Report]:
    """Reports by safe case id from a CSV with ``case`` and ``report`` columns (UTF-8, UTF-16 with BOM or Latin-1).

    Other columns are kept in each :class:`Report`'s ``extras``. Rows whose ids become the same
    safe id with different reports get a ``problem``. Raises ``TMCAError`` for a missing or
    unreadable file, missing columns, or a row without a case id.
    """
    source = Path(path)
    text = read_text_file(source, "reports CSV")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise TMCAError(f"cannot parse reports CSV {source}: {error}") from None
    header = [name.strip() for name in rows[0]] if rows else []
    columns = [name.lower() for name in header]
    if "case" not in columns or "report" not in columns:
        found = ", ".join(header) or "nothing"
        raise TMCAError(f"reports CSV {source} needs the columns case and report (found: {found}); add a header line 'case,report'")
    entries = []
    for line, values in enumerate(rows[1:], start=2):
        if not any(value.strip() for value in values):
            continue
        record = dict(zip(columns, values))
        if not record.get("case", "").strip():
            raise TMCAError(f"line {line} of reports CSV {source} has no case id; fill in the case column or delete the line")
        extras = {name: value for name, column, value in zip(header, columns, values) if column not in ("case", "report")}
        entries.append((record["case"].strip(), record.get("report", ""), f"{source.name} line {line}", extras))
    return index_reports(entries)


def index_reports(entries: Iterable[tuple[str, str, str, Mapping[str, str]]]) -> dict[str, Report]:
    """``(case id, text, origin, extras)`` entries -> reports by safe id, flagging conflicting duplicates."""
    reports: dict[str, Report] = {}
    for raw_id, text, origin, extras in entries:
        case_id = safe_case_id(strip_suffix(raw_id))
        earlier = reports.get(case_id)
        if earlier is not None and earlier.text.strip() != text.strip():
            problem = f"{earlier.origin} and {origin} give different reports for case {case_id!r}; keep one"
            reports[case_id] = Report(earlier.text, earlier.origin, earlier.extras, problem)
        elif earlier is None:
            reports[case_id] = Report(text, origin, dict(extras))
    return reports


def _reports_argument(reports: str | os.PathLike | Mapping[str, str] | None) -> dict[str, Report]:
    if reports is None:
        return {}
    if isinstance(reports, Mapping):
        return index_reports((str(case), str(text), "the reports dict", {}) for case, text in reports.items())
    return read_reports_csv(reports)


def _unmatched_report_cases(reports: Mapping[str, Report], cases: list[Case], study: Path) -> list[Case]:
    """A report whose case id matches no image is a case of its own, which fails (nothing is lost)."""
    known = {case.id for case in cases}
    return [
        Case(id=case_id, input="", problem=f"{report.origin} names case {case_id!r} but no image or DICOM series in {study} has that id")
        for case_id, report in reports.items()
        if case_id not in known
    ]


# ---------------------------------------------------------------------------------------------
# Shards


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based): the cases at sorted positions ``index - 1``, ``index - 1 + count``, ..."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"I/N"`` with 1 <= I <= N."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise TMCAError(f"shard {text!r} must be I/N with 1 <= I <= N, e.g. 1/4 for the first of four shards")
        return cls(int(match[1]), int(match[2]))

    def select(self, cases: list[Case]) -> list[Case]:
        return cases[self.index - 1 :: self.count]

    @property
    def summary_stem(self) -> str:
        return f"summary-shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# ---------------------------------------------------------------------------------------------
# Summaries


def write_summary(folder: Path, stem: str, rows: list[dict[str, Any]], meta: Mapping[str, Any]) -> None:
    """Write ``<stem>.csv`` and ``<stem>.json`` in ``folder``, each atomically."""
    write_text_atomic(folder / f"{stem}.csv", _summary_csv(rows))
    document = {"format": SUMMARY_FORMAT, **meta, "counts": count_statuses(rows), "rows": rows}
    write_text_atomic(folder / f"{stem}.json", json.dumps(document, indent=1, ensure_ascii=False) + "\n")


def _summary_csv(rows: list[dict[str, Any]]) -> str:
    extras = list(dict.fromkeys(name for row in rows for name in row if name not in COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *extras], lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: "; ".join(map(str, value)) if name in LIST_COLUMNS else value for name, value in row.items()})
    return buffer.getvalue()


def count_statuses(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A ``summary*.json`` written by :func:`write_summary`; ``TMCAError`` when it is not one."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TMCAError(f"batch summary not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TMCAError(f"cannot read batch summary {path}: {error}") from None
    if not isinstance(document, dict) or document.get("format") != SUMMARY_FORMAT or not isinstance(document.get("rows"), list):
        raise TMCAError(f"{path} is not a tmca batch summary ({SUMMARY_FORMAT})")
    return document


# ---------------------------------------------------------------------------------------------
# The run


def run_batch(
    study_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    reports: str | os.PathLike | Mapping[str, str] | None = None,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    threshold: float = 0.5,
    probability: bool = False,
    shard: Shard | str | None = None,
    overwrite: bool = False,
    fail_fast: bool = False,
    progress: ProgressCallback | None = None,
    batch_size: int | None = None,
    dicom_seg: bool = False,
    backend: str = "eager",
    large_images: str | None = None,
) -> list[dict[str, Any]]:
    """Segment every case of ``study_dir`` into ``output_dir``; return the summary rows.

    dicom_seg: also write ``<case>.dcm``, a DICOM Segmentation, beside ``<case>.seg.nrrd`` (a
    non-DICOM case then fails with a message before the model runs; a report with no positive
    finding gets no ``.dcm``).

    reports: a CSV path (``case``, ``report`` columns), a dict case id -> report, or None; a case
    the reports do not name uses its sidecar ``<case>.txt`` (beside the image or in the study
    folder). shard: ``"I/N"`` or a :class:`Shard`. progress(done, total, stage, **extra) is
    called before and after every case (extra: ``case``; when it is done ``status``, and ``error``
    when it failed). backend: the engine's inference backend, large_images: how slices larger than the
    model's input are predicted (None: as the model was trained; see :class:`tmca.inference.Segmenter`).

    Raises ``TMCAError`` for a bad study folder, reports CSV, model, device or shard, and
    ``CancelledError`` (after recording the summary) when interrupted. Failing cases do not
    raise: their rows have status ``failed``.
    """
    from tmca.devices import resolve_device
    from tmca.inference import check_threshold
    from tmca.models import resolve_model

    study = _study_folder(study_dir)  # every argument is checked before any work
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    threshold = check_threshold(threshold)
    listed = _reports_argument(reports)
    output = Path(output_dir).expanduser().resolve()
    _check_output_folder(study, output)
    cases = _cases_of_study(study, output, listed)
    resolve_device(device)
    model_path = resolve_model(model)
    large_images = _large_images_override(model_path, large_images)
    run = _BatchRun(
        study=study, output=_output_folder(output_dir), cases=shard.select(cases) if shard else cases, reports=listed,
        shard=shard, model_path=model_path, device=device, threshold=threshold, probability=bool(probability),
        overwrite=bool(overwrite), fail_fast=bool(fail_fast), batch_size=batch_size, backend=backend,
        settings_sha256=_settings_sha256(model_path, threshold, large_images), dicom_seg=bool(dicom_seg), large_images=large_images,
    )  # fmt: skip
    return run.execute(progress or (lambda done, total, stage, **extra: None))


def _cases_of_study(study: Path, output: Path, reports: Mapping[str, Report]) -> list[Case]:
    """The study's cases and the reports that match none, sorted by id; ``TMCAError`` when there are none."""
    cases = find_cases(study, exclude=output)
    if not cases:
        raise TMCAError(f"no cases in {study}: no NIfTI, NRRD or MHA image and no DICOM series; choose the folder that holds the study")
    return sorted(cases + _unmatched_report_cases(reports, cases, study), key=lambda case: (case.id, case.input))


def _check_output_folder(study: Path, output: Path) -> None:
    """Refuse an output folder that is the study folder, or a folder of the study that holds images
    (the search skips the output folder, so they would be left out, and outputs would lie among
    inputs). A new subfolder of the study, or one holding only earlier outputs, is fine."""
    if output == study:
        raise TMCAError(f"output folder {output} is the study folder; write the outputs to another folder (a new subfolder of the study is fine)")
    if not (output.is_dir() and output.is_relative_to(study)):
        return
    inputs = next((case for case in find_cases(output) if not case.input.endswith(PROBABILITY_SUFFIX)), None)
    if inputs is not None:
        raise TMCAError(
            f"output folder {output} holds input images of the study ({inputs.input}); "
            "write the outputs to a folder without images (a new subfolder of the study is fine)"
        )


@dataclass
class _BatchRun:
    """One checked run: its cases, settings, the rows so far and the model, loaded on first use."""

    study: Path
    output: Path
    cases: list[Case]
    reports: dict[str, Report]
    shard: Shard | None
    model_path: Path
    device: str
    threshold: float
    probability: bool
    overwrite: bool
    fail_fast: bool
    batch_size: int | None
    settings_sha256: str
    dicom_seg: bool = False
    backend: str = "eager"
    large_images: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    segmenter: Any = field(default=None, repr=False)

    def execute(self, progress: ProgressCallback) -> list[dict[str, Any]]:
        total = len(self.cases)
        self._write_summary(finished=False)
        current = None  # the case whose row is not recorded yet
        try:
            for done, case in enumerate(self.cases):
                current = case
                progress(done, total, "cases", case=case.id)
                row = self._process(case, progress, done)
                self.rows.append(row)
                current = None
                self._write_summary(finished=False)
                failure = {"error": row["error"]} if row["status"] == "failed" else {}
                progress(done + 1, total, "cases", case=case.id, status=row["status"], **failure)
                if self.fail_fast and failure:
                    return self.rows
        except (CancelledError, KeyboardInterrupt) as error:
            self._stop(current, error)
        self._write_summary(finished=True)
        return self.rows

    def _stop(self, current: Case | None, error: BaseException) -> None:
        """Record the interrupted case as failed, write the summary, and raise CancelledError."""
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error).split(";")[0]  # "stopped by SIGTERM"
        if current is not None:
            row = self._new_row(current, self.reports.get(current.id))
            self.rows.append({**row, "status": "failed", "error": f"interrupted ({reason}) before this case finished; rerun to resume"})
        self._write_summary(finished=False)
        where = f" during case {current.id!r}" if current is not None else ""
        raise CancelledError(
            f"{reason}{where} after {len(self.rows) - (current is not None)} of {len(self.cases)} cases; "
            f"the summary in {self.output} lists them; rerun the same command to resume"
        ) from error

    # -- one case ------------------------------------------------------------------------------

    def _process(self, case: Case, progress: ProgressCallback, done: int) -> dict[str, Any]:
        """The case's finished row; its ``seconds`` leave out loading the model."""
        started = time.monotonic()
        row = self._new_row(case, self.reports.get(case.id))
        finished = self._attempt(row, lambda: self._triage(case, row))
        if finished is None:
            loading = time.monotonic()
            segmenter = self._model(progress, done)  # a model that cannot load stops the run
            started += time.monotonic() - loading
            finished = self._attempt(row, lambda: self._segment(segmenter, case, row))
        return {**finished, "seconds": round(time.monotonic() - started, 2)}

    @staticmethod
    def _attempt(row: dict[str, Any], action: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        """``action()``, or ``row`` marked failed when it raises: one bad case must not stop the batch."""
        try:
            return action()
        except CancelledError:
            raise
        except Exception as error:
            return {**row, "status": "failed", "error": _error_text(error)}

    def _triage(self, case: Case, row: dict[str, Any]) -> dict[str, Any] | None:
        """The finished row of a case that is not segmented (failed, no-report, skipped); else None,
        after adding the report and the hashes to ``row``."""
        listed = self.reports.get(case.id)
        if case.problem or (listed is not None and listed.problem):
            return {**row, "status": "failed", "error": case.problem or listed.problem}
        if self.dicom_seg and case.series_uid is None:
            return {**row, "status": "failed", "error": f"--dicom-seg needs DICOM input, and {case.input} is not DICOM; run it without --dicom-seg"}
        report = self._report_of(case)
        if report is None:
            return {**row, "status": "no-report", "error": f"no report: the reports do not name {case.id!r} and no {case.id}.txt sidecar exists"}
        row.update(report=report.text, input_sha256=_inputs_sha256(case), report_sha256=_text_sha256(report.text))
        previous = None if self.overwrite else self._previous_result(case, row)
        if previous is None:
            return None
        kept = (*LIST_COLUMNS, "disagreements", "output", "probability", "dicom_seg")
        return {**row, **{name: previous.get(name, row[name]) for name in kept}, "status": "skipped"}

    def _new_row(self, case: Case, report: Report | None) -> dict[str, Any]:
        """A summary row with the case's identity; results and status are filled in later."""
        row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
        row.update(case=case.id, input=case.input, series_uid=case.series_uid or "", seconds=0.0, settings_sha256=self.settings_sha256)
        row["report"] = report.text.strip() if report else ""
        row.update({name: [] for name in LIST_COLUMNS})
        for name, value in (report.extras if report else {}).items():
            row[f"csv_{name}" if name in COLUMNS else name] = value
        return row

    def _report_of(self, case: Case) -> Report | None:
        """The listed report of this case, else its first sidecar file (stripped); None when neither has words."""
        listed = self.reports.get(case.id)
        if listed is not None and listed.text.strip():
            return Report(listed.text.strip(), listed.origin, listed.extras)
        for path in case.report_files:
            if path.is_file():
                text = read_text_file(path, "report").strip()
                if text:
                    return Report(text, str(path))
        return None

    def _segment(self, segmenter, case: Case, row: dict[str, Any]) -> dict[str, Any]:
        """Segment one case, write its outputs and remember them; returns the finished row."""
        from tmca.imageio import load_image
        image = load_image(case.source, series_uid=case.series_uid if case.source.is_dir() else None)
        result = segmenter.segment(image, row["report"], threshold=self.threshold)
        outputs = self._outputs(case)
        self._state_path(case).unlink(missing_ok=True)  # the old outputs are about to be replaced
        result.save(outputs["output"], outputs.get("probability"))
        written = self._write_dicom_seg(case, result, outputs.pop("dicom_seg", None))
        finished = {
            **row,
            "status": "ok",
            "findings": [record.name for record in result.records],
            "volume_ml": [record.volume_ml for record in result.records],
            "components": [record.components for record in result.records],
            **_clinical_columns(result),
            **{name: path.name for name, path in outputs.items()},
            "dicom_seg": written.name if written else "",
        }
        self._remember(case, finished)
        return finished

    def _outputs(self, case: Case) -> dict[str, Path]:
        """Summary column -> output file of ``case``."""
        outputs = {"output": self.output / f"{case.id}.seg.nrrd"}
        if self.probability:
            outputs["probability"] = self.output / f"{case.id}{PROBABILITY_SUFFIX}"
        if self.dicom_seg:
            outputs["dicom_seg"] = self.output / f"{case.id}.dcm"
        return outputs

    def _write_dicom_seg(self, case: Case, result, path: Path | None) -> Path | None:
        """The case's DICOM SEG, when asked and the report has a positive finding (else an old one is removed)."""
        if path is None:
            return None
        if not result.records:
            path.unlink(missing_ok=True)
            return None
        from tmca.dicomseg import algorithm_of, write_dicom_seg

        write_dicom_seg(path, list(result.masks), result.records, result.reference, list(case.inputs), algorithm_of(self.model_path))
        return path

    def _model(self, progress: ProgressCallback, done: int):
        """The Segmenter, loaded on first use (a rerun that skips every case loads nothing)."""
        if self.segmenter is None:
            from tmca.inference import Segmenter

            progress(done, len(self.cases), "loading model")
            self.segmenter = Segmenter(
                self.model_path, device=self.device, batch_size=self.batch_size, backend=self.backend, large_images=self.large_images
            )  # fmt: skip
        return self.segmenter

    # -- resume state --------------------------------------------------------------------------

    def _state_path(self, case: Case) -> Path:
        return self.output / STATE_FOLDER / f"{case.id}.json"

    def _remember(self, case: Case, row: Mapping[str, Any]) -> None:
        """Record the row (with its hashes) once the outputs are written: no state without outputs."""
        state = self._state_path(case)
        state.parent.mkdir(exist_ok=True)
        write_text_atomic(state, json.dumps(row, ensure_ascii=False))

    def _previous_result(self, case: Case, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """The recorded row when the outputs exist and the input, report and settings are unchanged."""
        try:
            state = json.loads(self._state_path(case).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        same = isinstance(state, dict) and all(state.get(name) == row[name] for name in ("input_sha256", "report_sha256", "settings_sha256"))
        expected = self._outputs(case)
        if isinstance(state, dict) and state.get("findings") == []:
            expected.pop("dicom_seg", None)  # no positive finding: no .dcm to expect
        present = all(path.is_file() for path in expected.values())
        return state if same and present else None

    # -- summary -------------------------------------------------------------------------------

    def _write_summary(self, finished: bool) -> None:
        meta = {
            "study_dir": str(self.study),
            "output_dir": str(self.output),
            "shard": str(self.shard) if self.shard else None,
            "total": len(self.cases),
            "finished": finished,
        }
        write_summary(self.output, self.shard.summary_stem if self.shard else "summary", self.rows, meta)


def report_outcome(rows: list[dict[str, Any]], summary: Path, json_progress: Any = None) -> None:
    """Tell how a run (or a merge) ended: the final ``result`` event on ``json_progress`` (a
    :class:`tmca.progress.JsonProgress`), else the counts, skips and failures printed for people.
    ``summary`` is the summary's path without its ``.csv``/``.json`` suffix."""
    counts = count_statuses(rows)
    disagreeing = {row["case"]: row["disagreements"] for row in rows if isinstance(row.get("disagreements"), int) and row["disagreements"]}
    if json_progress is not None:
        from tmca.protocol import result_event

        total = sum(disagreeing.values())
        json_progress.emit(result_event(f"{summary}.json", [], csv=f"{summary}.csv", counts=counts, disagreements=total))
        return
    print(f"{len(rows)} case(s): " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    if disagreeing:
        cases = ", ".join(f"{case} ({count})" for case, count in disagreeing.items())
        print(f"{sum(disagreeing.values())} report-to-mask check(s) disagree in {len(disagreeing)} case(s): {cases}; see the checks column")
    if counts["skipped"]:
        print(f"skipped {counts['skipped']} case(s) whose outputs are up to date (same input, report, model and threshold); --overwrite redoes them")
    for row in rows:
        if row["status"] == "failed":
            print(f"  failed {row['case']}: {row['error']}")
    print(f"summary: {summary}.csv, {summary}.json")


# ---------------------------------------------------------------------------------------------
# Merging shard summaries


def merge_summaries(folders: Iterable[str | os.PathLike], output: str | os.PathLike) -> dict[str, Any]:
    """Combine the batch summaries of ``folders`` into ``<output>/summary.csv`` and ``summary.json``.

    Each folder contributes its ``summary-shard-I-of-N.json`` files, or its ``summary.json``
    when it has none. Raises ``TMCAError`` when a shard of the split is missing, when shards of
    different splits are mixed, or when a case appears twice. Output paths in the rows are
    rewritten relative to ``output``. Returns the merged summary document.
    """
    target = _output_folder(output)
    documents = [(path, read_summary(path)) for folder in folders for path in _summary_files(Path(folder))]
    _check_complete_split([document for _, document in documents])
    rows: list[dict[str, Any]] = []
    origin: dict[str, Path] = {}
    for path, document in documents:
        for row in document["rows"]:
            if row["case"] in origin:
                raise TMCAError(f"case {row['case']!r} is in both {origin[row['case']]} and {path}; merge summaries of one split only")
            origin[row["case"]] = path
            rows.append(_rebased(row, path.parent, target))
    studies = {document.get("study_dir") for _, document in documents}
    meta = {
        "study_dir": studies.pop() if len(studies) == 1 else None,
        "output_dir": str(target),
        "shard": None,
        "total": sum(int(document.get("total") or 0) for _, document in documents),
        "finished": all(document.get("finished") for _, document in documents),
        "merged_from": [str(path) for path, _ in documents],
    }
    rows.sort(key=lambda row: row["case"])
    write_summary(target, "summary", rows, meta)
    return read_summary(target / "summary.json")


def _summary_files(folder: Path) -> list[Path]:
    shards = sorted(folder.glob("summary-shard-*-of-*.json"))
    if shards:
        return shards
    if (folder / "summary.json").is_file():
        return [folder / "summary.json"]
    raise TMCAError(f"no batch summary in {folder} (summary-shard-I-of-N.json or summary.json); check the folder")


def _check_complete_split(documents: list[dict[str, Any]]) -> None:
    shards = {Shard.parse(document["shard"]) for document in documents if document.get("shard")}
    counts = sorted({shard.count for shard in shards})
    if len(counts) > 1:
        raise TMCAError(f"the summaries mix splits into {' and '.join(map(str, counts))} shards; merge the shards of one split")
    if counts:
        missing = [f"{index}/{counts[0]}" for index in range(1, counts[0] + 1) if Shard(index, counts[0]) not in shards]
        if missing:
            raise TMCAError(f"shard {', '.join(missing)} is missing from the folders given; run it (or pass its output folder) before merging")


def _rebased(row: dict[str, Any], source: Path, target: Path) -> dict[str, Any]:
    """``row`` with its output file names relative to ``target`` instead of ``source``."""
    moved = {
        name: Path(os.path.relpath(source.resolve() / row[name], target.resolve())).as_posix()
        for name in ("output", "probability", "dicom_seg")
        if row.get(name)
    }
    return {**row, **moved}


# ---------------------------------------------------------------------------------------------
# Small helpers


def _study_folder(study_dir: str | os.PathLike) -> Path:
    study = Path(study_dir).expanduser()
    if not study.exists():
        raise TMCAError(f"study folder not found: {study}; check the path")
    if not study.is_dir():
        raise TMCAError(f"{study} is not a folder; give the folder that holds the study's images")
    return study.resolve()


def _output_folder(output_dir: str | os.PathLike) -> Path:
    output = Path(output_dir).expanduser()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TMCAError(f"output {output} is a file; give a folder") from None
    except OSError as error:
        raise TMCAError(f"cannot create output folder {output}: {error.strerror}; choose another folder") from None
    if not os.access(output, os.W_OK):
        raise TMCAError(f"output folder {output} is not writable; choose another folder")
    return output.resolve()


def _clinical_columns(result) -> dict[str, Any]:
    """Negative findings, terminology, checks and the disagreement count of a segmentation result."""
    from tmca.reconcile import checks_text, disagreements

    def coded(terminology: Mapping[str, Any]) -> str:
        parts = [terminology.get(key) for key in ("type", "region", "laterality")]
        return " | ".join(f"{p['meaning']} ({p['scheme']} {p['value']})" for p in parts if p)

    return {
        "negative_findings": [record.text for record in result.negative_records],
        "terminology": [coded(record.terminology) for record in result.records],
        "checks": [checks_text(record.checks) for record in result.records],
        "disagreements": sum(disagreements(record.checks) for record in result.records),
    }


def _settings_sha256(model_path: Path, threshold: float, large_images: str | None = None) -> str:
    """Identity of what makes a case's outputs: the checkpoint's manifest (hashes of its files), the threshold
    and a large-image mode other than the model's own."""
    from tmca.checkpoint import MANIFEST_FILE, sha256_of

    try:
        model = sha256_of(model_path / MANIFEST_FILE)
    except OSError:
        raise TMCAError(f"model folder {model_path} has no readable {MANIFEST_FILE}; pass a tmca checkpoint folder") from None
    settings = {"model": model, "threshold": threshold} | ({"large_images": large_images} if large_images else {})
    return _text_sha256(json.dumps(settings, sort_keys=True))


def _large_images_override(model_path: Path, requested: str | None) -> str | None:
    """``requested`` when it changes how the model predicts large slices, else None (checked before any work)."""
    from tmca.checkpoint import read_checkpoint_config
    from tmca.sliding import resolve_large_images

    if requested is None:
        return None
    trained = str(read_checkpoint_config(model_path).get("model", {}).get("large_images", "resize"))
    mode = resolve_large_images(requested, trained)
    return mode if mode != trained else None


def _inputs_sha256(case: Case) -> str:
    from tmca.checkpoint import sha256_of

    digest = hashlib.sha256()
    for path in case.inputs:
        digest.update(f"{path.name}\0{sha256_of(path)}\n".encode("utf-8"))
    return digest.hexdigest()


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()



def _error_text(error: BaseException) -> str:
    """One line: a TMCAError's own message, else the exception's type and message."""
    text = str(error) if isinstance(error, TMCAError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())
