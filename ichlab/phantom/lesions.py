"""The five hemorrhage subtypes as 3D lesions with the shapes and places they have on CT.

Epidural: a biconvex lens against the inner table, short and thick. Subdural: a long thin
crescent along the convexity. Subarachnoid: blood in the sulci and surface CSF of one region,
or in the basal cisterns. Intraparenchymal: a rounded clot deep in the parenchyma with a rim of
oedema. Intraventricular: blood layering in the dependent (posterior) part of a lateral
ventricle. All fresh blood draws from one HU range, so the subtypes differ by shape and place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichlab import SUBTYPES
from ichlab.phantom import anatomy
from ichlab.phantom.anatomy import HeadSpec, SliceFields

SLICE_SPACING_MM = 5.0


@dataclass(frozen=True)
class Difficulty:
    """Lesion visibility settings: size scale, blood HU range and scanner noise."""

    lesion_scale: float
    blood_hu: tuple[float, float]  # range of a lesion's mean blood HU
    noise_hu: float  # standard deviation of the scanner noise


DIFFICULTIES = {
    "easy": Difficulty(lesion_scale=1.25, blood_hu=(66.0, 80.0), noise_hu=3.0),
    "default": Difficulty(lesion_scale=1.0, blood_hu=(60.0, 76.0), noise_hu=4.5),
    "hard": Difficulty(lesion_scale=0.8, blood_hu=(54.0, 66.0), noise_hu=6.5),
}


@dataclass
class LesionSpec:
    """One lesion of one subtype; lengths in mm, angles in radians in the head frame.

    Fields a subtype does not use keep their defaults.
    """

    subtype: str
    z_mm: float  # centre height above the skull base
    half_height: float  # extent along the slice normal, each side of the centre
    blood_hu: float = 70.0  # mean HU of the blood, assigned after all lesions are drawn
    angle: float = 0.0  # epidural, subdural, convexity subarachnoid: centre direction
    half_arc: float = 0.0  # extent along the inner table, each side of the centre
    thickness: float = 0.0  # epidural and subdural: maximum depth below the inner table
    centre: tuple[float, float] = (0.0, 0.0)  # intraparenchymal: (ux, uy)
    radii: tuple[float, float] = (0.0, 0.0)  # intraparenchymal: in-plane semi-axes
    oedema: float = 0.0  # intraparenchymal: rim width
    phase: float = 0.0  # irregularity of an intraparenchymal clot's outline
    side: int = 0  # intraventricular: -1 right, 1 left, 0 both ventricles
    fill: float = 0.0  # intraventricular: filled fraction of the ventricle's length
    basal: bool = False  # subarachnoid: in the basal cisterns instead of a convexity


def _snap_to_slice(z_mm: float) -> float:
    # Centre a lesion on a slice, so its largest cross-section is imaged.
    return (np.floor(z_mm / SLICE_SPACING_MM) + 0.5) * SLICE_SPACING_MM


def _lateral_angle(rng: np.random.Generator, spread: float) -> float:
    side = np.pi if rng.random() < 0.5 else 0.0
    return float(anatomy.wrap_angle(side + rng.uniform(-spread, spread)))


def _pick_height(rng: np.random.Generator, head: HeadSpec, low: float, high: float, covered: tuple[float, float]) -> float:
    # Uniform over the subtype's usual heights (fractions of the head) that the series covers.
    bottom = max(low * head.height_mm, covered[0])
    top = min(high * head.height_mm, covered[1])
    if bottom > top:
        bottom = top = min(max(0.5 * (low + high) * head.height_mm, covered[0]), covered[1])
    return _snap_to_slice(rng.uniform(bottom, top))


def sample_lesion(
    subtype: str,
    head: HeadSpec,
    rng: np.random.Generator,
    difficulty: Difficulty,
    covered: tuple[float, float] | None = None,
) -> LesionSpec:
    """Draw one lesion of ``subtype`` placed where that subtype occurs in ``head``.

    Parameters
    ----------
    covered
        Heights in mm of the series' lowest and highest slice centres; lesions are centred
        inside this range. Default: the whole head.
    """
    scale = difficulty.lesion_scale
    height = head.height_mm
    covered = covered or (0.0, height)

    if subtype == "epidural":
        angle = _lateral_angle(rng, 0.6) if rng.random() < 0.8 else float(-np.pi / 2 + rng.uniform(-0.4, 0.4))
        return LesionSpec(
            subtype,
            z_mm=_pick_height(rng, head, 0.4, 0.72, covered),
            half_height=rng.uniform(14, 20) * scale,
            angle=angle,
            half_arc=rng.uniform(28, 42) * scale,
            thickness=rng.uniform(12, 18) * scale,
        )
    if subtype == "subdural":
        return LesionSpec(
            subtype,
            z_mm=_pick_height(rng, head, 0.45, 0.72, covered),
            half_height=rng.uniform(20, 32) * scale,
            angle=_lateral_angle(rng, 0.5),
            half_arc=rng.uniform(65, 100) * scale,
            thickness=rng.uniform(7, 12) * scale,
        )
    if subtype == "subarachnoid":
        low, high = anatomy.CISTERN_HEIGHTS
        cisterns_covered = covered[0] <= height * (low + high) / 2 <= covered[1]
        if rng.random() < 0.35 and cisterns_covered:
            return LesionSpec(subtype, z_mm=height * (low + high) / 2, half_height=height * (high - low) / 2, basal=True)
        return LesionSpec(
            subtype,
            z_mm=_pick_height(rng, head, 0.5, 0.8, covered),
            half_height=rng.uniform(18, 28) * scale,
            angle=float(rng.uniform(-np.pi, np.pi)),
            half_arc=rng.uniform(35, 55) * scale,
        )
    if subtype == "intraparenchymal":
        return _sample_clot(head, rng, scale, covered)
    if subtype == "intraventricular":
        side = 0 if rng.random() < 0.4 else int(rng.choice([-1, 1]))
        return LesionSpec(
            subtype,
            z_mm=head.ventricle_height * height,
            half_height=head.ventricle_half_height * height,
            side=side,
            fill=rng.uniform(0.3, 0.55) * min(scale, 1.1),
        )
    raise ValueError(f"unknown subtype {subtype!r}; expected one of {', '.join(SUBTYPES)}")


def _sample_clot(head: HeadSpec, rng: np.random.Generator, scale: float, covered: tuple[float, float]) -> LesionSpec:
    # Rejection sampling: the clot stays clear of the ventricles and of the cortex, so the
    # blood lies inside the parenchyma (its mask is also limited to parenchyma pixels).
    for attempt in range(400):
        shrink = 0.9 ** (attempt // 100)
        radii = (rng.uniform(8, 14) * scale * shrink, rng.uniform(8, 14) * scale * shrink)
        half_height = rng.uniform(9, 14) * scale * shrink
        oedema = rng.uniform(2.5, 4.5)
        z_mm = _pick_height(rng, head, 0.38, 0.62, covered)
        side = 1 if rng.random() < 0.5 else -1
        centre = (side * rng.uniform(15, 45), rng.uniform(-55, 50))
        reach = max(radii) * 1.2

        clear_of_ventricles = (
            abs(centre[0]) - reach > head.ventricle_offset + head.ventricle_half_width + 1
            or abs(centre[1] - 3) - reach > head.ventricle_half_length + 1
        )
        h_top = (z_mm + half_height) / head.height_mm
        h_bottom = (z_mm - half_height) / head.height_mm
        narrowest = max(min(anatomy.size_factor(h_top), anatomy.size_factor(h_bottom)), 0.05)
        theta = np.arctan2(centre[1], centre[0])
        skin = 1.0 / np.sqrt((np.cos(theta) / (head.half_width * narrowest)) ** 2 + (np.sin(theta) / (head.half_length * narrowest)) ** 2)
        inner = skin - (head.scalp + head.skull) / max(narrowest, 0.45) ** 0.5
        deep_enough = np.hypot(*centre) + reach + oedema + head.csf_layer + head.cortex + 4 < inner
        if clear_of_ventricles and deep_enough:
            return LesionSpec(
                "intraparenchymal",
                z_mm=z_mm,
                half_height=half_height,
                centre=centre,
                radii=radii,
                oedema=oedema,
                phase=float(rng.uniform(0, 2 * np.pi)),
            )
    raise RuntimeError("no place inside the parenchyma fits an intraparenchymal clot; the head is too small")


def render_lesion(lesion: LesionSpec, head: HeadSpec, fields: SliceFields) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the (H, W) bool blood mask of ``lesion`` on one slice, and its oedema mask or None."""
    dz = fields.z_mm - lesion.z_mm
    empty = np.zeros(fields.tissue.shape, dtype=bool)
    if abs(dz) >= lesion.half_height:
        return empty, None
    brain = fields.depth >= 0

    if lesion.subtype in ("epidural", "subdural") or (lesion.subtype == "subarachnoid" and not lesion.basal):
        arc = np.abs(anatomy.wrap_angle(fields.theta - np.float32(lesion.angle))) * fields.inner_radius
        reach = (arc / lesion.half_arc) ** 2 + (dz / lesion.half_height) ** 2  # < 1 inside the lesion's extent
        inside = reach < 1
        if lesion.subtype == "epidural":
            # Biconvex lens: thickness falls off quadratically, so the ends are pointed.
            local_thickness = lesion.thickness * np.clip(1 - reach, 0, None)
            return brain & inside & (fields.depth < local_thickness), None
        if lesion.subtype == "subdural":
            # Crescent: nearly constant thickness over a long arc, thinning at the ends.
            local_thickness = lesion.thickness * np.sqrt(np.clip(1 - reach, 0, None))
            return brain & inside & (fields.depth < local_thickness), None
        # Blood distends the sulci and the surface CSF it fills.
        csf_space = np.isin(fields.tissue, (anatomy.CSF_SURFACE, anatomy.SULCUS, anatomy.FISSURE))
        distended_sulcus = (fields.sulcus_distance < 0.8 * head.sulcus_width) & (fields.depth < fields.sulcus_depth)
        surface = fields.depth < 1.8 * head.csf_layer
        not_ventricle = fields.tissue != anatomy.VENTRICLE
        return brain & inside & not_ventricle & (csf_space | distended_sulcus | surface), None

    if lesion.subtype == "subarachnoid":
        cistern = fields.tissue == anatomy.CISTERN
        # Sylvian fissures: the sulci running laterally from the cisterns.
        sylvian = np.minimum(
            np.abs(anatomy.wrap_angle(fields.theta + np.float32(0.45))),
            np.abs(anatomy.wrap_angle(fields.theta - np.float32(np.pi + 0.45))),
        )
        distended_sulcus = (fields.sulcus_distance < 0.8 * head.sulcus_width) & (fields.depth < fields.sulcus_depth)
        near_sylvian = (sylvian < 0.35) & distended_sulcus & brain & (fields.depth >= head.csf_layer)
        return cistern | near_sylvian, None

    if lesion.subtype == "intraparenchymal":
        dx = fields.ux - lesion.centre[0]
        dy = fields.uy - lesion.centre[1]
        angle = np.arctan2(dy, dx)
        outline = 1 + 0.12 * np.sin(3 * angle + lesion.phase) + 0.07 * np.sin(5 * angle + 2 * lesion.phase)
        vertical = 1 - (dz / lesion.half_height) ** 2
        distance = np.sqrt((dx / lesion.radii[0]) ** 2 + (dy / lesion.radii[1]) ** 2)  # 1 on the mean outline
        parenchyma = np.isin(fields.tissue, anatomy.PARENCHYMA)
        clot = parenchyma & (distance < outline * np.sqrt(vertical))
        rim = 1 + lesion.oedema / min(lesion.radii)
        oedema = parenchyma & ~clot & (distance < outline * rim * np.sqrt(vertical))
        return clot, oedema

    if lesion.subtype == "intraventricular":
        lateral = (fields.tissue == anatomy.VENTRICLE) & (np.abs(fields.ux) > 2.5)
        if lesion.side != 0:
            lateral &= np.sign(fields.ux) == lesion.side
        # Blood settles posteriorly (dependent in a supine patient) below a fluid level.
        level = 3 + head.ventricle_half_length * (1 - 2 * lesion.fill)
        return lateral & (fields.uy > level), None

    raise ValueError(f"unknown subtype {lesion.subtype!r}; expected one of {', '.join(SUBTYPES)}")


def assign_blood_hu(lesions: list[LesionSpec], rng: np.random.Generator, difficulty: Difficulty) -> None:
    """Set each lesion's mean blood HU by stratified draws per subtype, in place.

    The lesions of every subtype get values spread evenly over ``difficulty.blood_hu`` in
    random order, so the mean blood brightness of each subtype is nearly the same and
    brightness alone does not give the subtype away.
    """
    low, high = difficulty.blood_hu
    for subtype in SUBTYPES:
        chosen = [lesion for lesion in lesions if lesion.subtype == subtype]
        if not chosen:
            continue
        strata = rng.permutation(len(chosen))
        for lesion, stratum in zip(chosen, strata):
            lesion.blood_hu = float(low + (high - low) * (stratum + rng.random()) / len(chosen))
