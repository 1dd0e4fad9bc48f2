"""The plan of a generated dataset: every patient's head, lesions, header values and quirks.

Planning draws all random choices except pixel noise from the seed alone, so the same
settings always give the same dataset. Each patient's anatomy depends only on the seed and
the patient's index. Which patients get which subtype depends on the whole set, because every
subtype is guaranteed a minimum number of positive patients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from ichlab import SUBTYPES
from ichlab.phantom.anatomy import HeadSpec, sample_head, wrap_angle
from ichlab.phantom.lesions import DIFFICULTIES, SLICE_SPACING_MM, LesionSpec, assign_blood_hu, sample_lesion
from ichlab.phantom.quirks import CLEAN_ENCODINGS, QUIRK_RATES, choose_hits

# Share of patients with each subtype before the minimum is enforced. Epidural is the rarest,
# as in RSNA 2019; the others are raised well above RSNA's rates so that small sets still
# hold enough positive slices to learn from.
DEFAULT_PREVALENCE = {
    "epidural": 0.25,
    "intraparenchymal": 0.35,
    "intraventricular": 0.3,
    "subarachnoid": 0.35,
    "subdural": 0.4,
}

# Six positive patients per subtype leave at least one in each part of a 60/20/20 patient
# split of 24 patients when the split is stratified by subtype.
DEFAULT_MIN_POSITIVE_PATIENTS = 6

# A slice is labelled with a subtype when that lesion covers at least this area on it.
DEFAULT_LABEL_MIN_AREA_MM2 = 20.0

# Series with fewer slices cover only part of a head that is this many slices tall.
FULL_COVERAGE_SLICES = 20

# Raised whenever a change alters the generated data, so stale folders are regenerated.
GENERATOR_VERSION = 3


@dataclass
class PhantomSettings:
    """Everything that determines a generated dataset; stored in ``phantom.json``."""

    n_patients: int
    seed: int = 0
    image_size: int = 512
    slices_per_series: tuple[int, int] = (20, 40)
    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    difficulty: str = "default"
    quirks: dict[str, float] = field(default_factory=dict)
    min_positive_patients: int = DEFAULT_MIN_POSITIVE_PATIENTS
    label_min_area_mm2: float = DEFAULT_LABEL_MIN_AREA_MM2
    generator_version: int = GENERATOR_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON types, in the form ``phantom.json`` stores them."""
        settings = asdict(self)
        settings["slices_per_series"] = list(self.slices_per_series)
        return settings


def validate_prevalence(prevalence: Mapping[str, float] | None) -> dict[str, float]:
    """Merge ``prevalence`` into the defaults and check its names and rates."""
    merged = dict(DEFAULT_PREVALENCE)
    for name, rate in (prevalence or {}).items():
        if name not in SUBTYPES:
            raise ValueError(f"prevalence names unknown subtype {name!r}; expected one of {', '.join(SUBTYPES)}")
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"prevalence of {name} is {rate}, outside [0, 1]")
        merged[name] = float(rate)
    return merged


def check_settings(settings: PhantomSettings) -> None:
    """Raise ValueError naming the first invalid setting."""
    low, high = settings.slices_per_series
    if settings.n_patients < 1:
        raise ValueError(f"n_patients={settings.n_patients}; generate at least one patient")
    if not 2 <= low <= high:
        raise ValueError(f"slices_per_series={settings.slices_per_series} must be (min, max) with 2 <= min <= max")
    if settings.image_size < 16:
        raise ValueError(f"image_size={settings.image_size} px is too small; use at least 16")
    if settings.difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty={settings.difficulty!r} is unknown; expected one of {', '.join(DIFFICULTIES)}")
    if settings.min_positive_patients < 0:
        raise ValueError(f"min_positive_patients={settings.min_positive_patients} must not be negative")


@dataclass
class SeriesPlan:
    """One patient's series: identifiers, geometry, anatomy, lesions and quirks."""

    index: int
    patient_id: str
    study_uid: str
    series_uid: str
    frame_uid: str
    image_ids: list[str]  # in slice order, bottom to top
    sop_uids: list[str]
    rows: int
    columns: int
    pixel_spacing: float  # mm, the same along rows and columns
    tilt: float  # gantry tilt in radians
    table_z: float  # mm, patient z of the lowest slice centre at zero tilt
    first_slice_mm: float  # height of the lowest slice centre above the skull base
    head: HeadSpec
    lesions: list[LesionSpec]
    encoding: str  # key of quirks.ENCODINGS
    window: tuple[float, float]  # (center, width) in HU
    window_multivalue: bool = False
    window_zero_padded: bool = False
    missing_instance_numbers: set[int] = field(default_factory=set)  # slice indices
    truncated: set[int] = field(default_factory=set)  # slice indices
    noise_seed: int = 0

    @property
    def n_slices(self) -> int:
        return len(self.image_ids)


@dataclass
class DatasetPlan:
    """The plan of a whole dataset, and which images carry which quirk."""

    settings: PhantomSettings
    series: list[SeriesPlan]
    duplicate_label_images: list[str]
    quirk_images: dict[str, list[str]]  # quirk name -> affected image ids


def _hex_id(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        value = "ID_" + "".join(f"{byte:02x}" for byte in rng.integers(0, 256, 5))[:9]
        if value not in taken:
            taken.add(value)
            return value


def _first_slice_height(n_slices: int, head_height_mm: float) -> float:
    # A full series runs from the skull base to the vertex. A shorter one covers the middle
    # of the brain (the level of the ventricles), where every subtype can occur.
    half_step = SLICE_SPACING_MM / 2
    if n_slices >= FULL_COVERAGE_SLICES:
        return half_step
    centre = 0.55 * head_height_mm
    steps = round((centre - (n_slices - 1) * half_step - half_step) / SLICE_SPACING_MM)
    return half_step + steps * SLICE_SPACING_MM


def _round8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def assign_subtypes(settings: PhantomSettings, rng: np.random.Generator) -> np.ndarray:
    """Return (n_patients, 5) bool: which patients have which subtype.

    Each subtype is drawn per patient at its prevalence. Then the patients with the fewest
    lesions receive the subtype until ``min_positive_patients`` have it, capped at the
    number of patients.
    """
    n = settings.n_patients
    has = np.zeros((n, len(SUBTYPES)), dtype=bool)
    for column, subtype in enumerate(SUBTYPES):
        has[:, column] = rng.random(n) < settings.prevalence[subtype]
    for column in range(len(SUBTYPES)):
        missing = min(settings.min_positive_patients, n) - int(has[:, column].sum())
        if missing <= 0:
            continue
        candidates = np.flatnonzero(~has[:, column])
        load = has[candidates].sum(axis=1) + rng.random(candidates.size)  # random tie-break
        has[candidates[np.argsort(load)[:missing]], column] = True
    return has


def plan_dataset(settings: PhantomSettings) -> DatasetPlan:
    """Draw every patient's series from ``settings``; pixel noise is drawn later from ``noise_seed``."""
    check_settings(settings)
    difficulty = DIFFICULTIES[settings.difficulty]
    seed = settings.seed
    id_rng = np.random.default_rng([seed, 1])
    quirk_rng = np.random.default_rng([seed, 2])
    taken: set[str] = set()
    has = assign_subtypes(settings, np.random.default_rng([seed, 3]))

    series: list[SeriesPlan] = []
    for index in range(settings.n_patients):
        rng = np.random.default_rng([seed, 100, index])
        low, high = settings.slices_per_series
        n_slices = int(rng.integers(low, high + 1))
        head = sample_head(rng, max(n_slices, FULL_COVERAGE_SLICES) * SLICE_SPACING_MM)
        first_slice_mm = _first_slice_height(n_slices, head.height_mm)
        covered = (first_slice_mm, first_slice_mm + (n_slices - 1) * SLICE_SPACING_MM)
        fov = float(rng.uniform(220, 250))
        tilt = 0.0 if rng.random() < 0.5 else float(np.deg2rad(rng.uniform(5, 20)))
        lesion_rng = np.random.default_rng([seed, 200, index])
        lesions = [sample_lesion(subtype, head, lesion_rng, difficulty, covered) for subtype, on in zip(SUBTYPES, has[index]) if on]
        _separate_convexity_bleeds(lesions)

        entropy = [str(seed), str(index)]
        series.append(
            SeriesPlan(
                index=index,
                patient_id=_hex_id(id_rng, taken),
                study_uid=generate_uid(entropy_srcs=entropy + ["study"]),
                series_uid=generate_uid(entropy_srcs=entropy + ["series"]),
                frame_uid=generate_uid(entropy_srcs=entropy + ["frame"]),
                image_ids=[_hex_id(id_rng, taken) for _ in range(n_slices)],
                sop_uids=[generate_uid(entropy_srcs=entropy + ["image", str(i)]) for i in range(n_slices)],
                rows=settings.image_size,
                columns=settings.image_size,
                pixel_spacing=fov / settings.image_size,
                tilt=tilt,
                table_z=float(-rng.uniform(60, 180)),
                first_slice_mm=first_slice_mm,
                head=head,
                lesions=lesions,
                encoding=CLEAN_ENCODINGS[int(rng.integers(len(CLEAN_ENCODINGS)))],
                window=(float(rng.choice([30.0, 36.0, 40.0])), 80.0),
                noise_seed=int(rng.integers(2**31)),
            )
        )

    assign_blood_hu([lesion for plan in series for lesion in plan.lesions], np.random.default_rng([seed, 4]), difficulty)
    duplicates, quirk_images = _apply_quirks(series, settings, quirk_rng)
    return DatasetPlan(settings=settings, series=series, duplicate_label_images=duplicates, quirk_images=quirk_images)


def _separate_convexity_bleeds(lesions: list[LesionSpec]) -> None:
    # An epidural and a subdural bleed in one patient go to opposite sides, so their masks do not overlap.
    by_subtype = {lesion.subtype: lesion for lesion in lesions}
    if "epidural" in by_subtype and "subdural" in by_subtype:
        by_subtype["subdural"].angle = float(wrap_angle(by_subtype["epidural"].angle + np.pi))


def _apply_quirks(series: list[SeriesPlan], settings: PhantomSettings, rng: np.random.Generator) -> tuple[list[str], dict[str, list[str]]]:
    rates = {name: settings.quirks.get(name, 0.0) for name in QUIRK_RATES}
    quirk_images: dict[str, list[str]] = {}
    size = settings.image_size

    def record(name: str, image_ids: list[str]) -> None:
        quirk_images.setdefault(name, []).extend(image_ids)

    for index in choose_hits(rng, len(series), rates["wrapped_12bit"]):
        series[index].encoding = "wrapped_12bit"
        record("wrapped_12bit", series[index].image_ids)
    for index in choose_hits(rng, len(series), rates["window_multivalue"]):
        series[index].window_multivalue = True
        record("window_multivalue", series[index].image_ids)
    for index in choose_hits(rng, len(series), rates["window_zero_padded"]):
        series[index].window_zero_padded = True
        record("window_zero_padded", series[index].image_ids)
    for index in choose_hits(rng, len(series), rates["odd_size"]):
        plan = series[index]
        new_size = _round8(size * float(rng.choice([0.75, 0.875, 1.25])))
        plan.pixel_spacing *= plan.rows / new_size  # same field of view, another matrix
        plan.rows = plan.columns = new_size
        record("odd_size", plan.image_ids)
    for index in choose_hits(rng, len(series), rates["non_square"]):
        plan = series[index]
        plan.columns = _round8(plan.rows * float(rng.choice([1.125, 1.25])))  # wider field of view across
        record("non_square", plan.image_ids)

    files = [(plan, slice_index) for plan in series for slice_index in range(plan.n_slices)]
    for hit in choose_hits(rng, len(files), rates["missing_instance_number"]):
        plan, slice_index = files[hit]
        plan.missing_instance_numbers.add(slice_index)
        record("missing_instance_number", [plan.image_ids[slice_index]])
    for hit in choose_hits(rng, len(files), rates["truncated_file"]):
        plan, slice_index = files[hit]
        plan.truncated.add(slice_index)
        record("truncated_file", [plan.image_ids[slice_index]])
    duplicates = [files[hit][0].image_ids[files[hit][1]] for hit in choose_hits(rng, len(files), rates["duplicate_label_row"])]
    if duplicates:
        record("duplicate_label_row", duplicates)
    return duplicates, quirk_images
