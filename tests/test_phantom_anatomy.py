"""Anatomy and lesions of the generated head CT: HU per tissue, where each subtype lies, brightness."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ichlab import SUBTYPES
from ichlab.phantom import anatomy
from ichlab.phantom.plan import PhantomSettings, plan_dataset
from ichlab.phantom.render import render_series, slice_heights, slice_labels

ALL_SUBTYPES = {subtype: 1.0 for subtype in SUBTYPES}


@pytest.fixture(scope="module")
def lesion_series():
    """Four patients with all five subtypes each, rendered at 128 px: [(plan, rendered)]."""
    settings = PhantomSettings(n_patients=4, seed=3, image_size=128, slices_per_series=(20, 22), prevalence=ALL_SUBTYPES)
    plan = plan_dataset(settings)
    return settings, [(series, render_series(series)) for series in plan.series]


@pytest.fixture(scope="module")
def healthy_series():
    """One patient without lesions at 128 px."""
    settings = PhantomSettings(
        n_patients=1,
        seed=5,
        image_size=128,
        slices_per_series=(22, 22),
        prevalence={subtype: 0.0 for subtype in SUBTYPES},
        min_positive_patients=0,
    )
    series = plan_dataset(settings).series[0]
    assert not series.lesions
    return series, render_series(series)


def _hu_of(rendered, *tissues):
    return rendered.hu[np.isin(rendered.tissue, tissues)].astype(np.float64)


def test_air_is_minus_1000(healthy_series):
    _, rendered = healthy_series
    air = _hu_of(rendered, anatomy.AIR)
    assert abs(np.median(air) - (-1000)) <= 5
    assert air.max() < -950


def test_skull_is_cortical_bone_with_diploe(healthy_series):
    _, rendered = healthy_series
    bone = _hu_of(rendered, anatomy.BONE)
    assert 1000 <= np.percentile(bone, 90) <= 1550
    assert np.percentile(bone, 5) >= 500
    assert (bone < 800).mean() > 0.05, "no diploe: the skull has no lower-density middle layer"


def test_grey_and_white_matter_ranges(healthy_series):
    _, rendered = healthy_series
    grey = _hu_of(rendered, anatomy.GREY).mean()
    white = _hu_of(rendered, anatomy.WHITE).mean()
    assert 33 <= grey <= 41
    assert 24 <= white <= 31
    assert grey - white >= 5


def test_csf_spaces_range(healthy_series):
    _, rendered = healthy_series
    for tissue in (anatomy.VENTRICLE, anatomy.SULCUS, anatomy.CISTERN):
        values = _hu_of(rendered, tissue)
        assert values.size > 0, anatomy.TISSUE_NAMES[tissue]
        assert 0 <= values.mean() <= 15, anatomy.TISSUE_NAMES[tissue]


def test_structures_change_with_height(healthy_series):
    _, rendered = healthy_series
    per_slice = [set(np.unique(tissue_map)) for tissue_map in rendered.tissue]
    cistern_slices = [index for index, tissues in enumerate(per_slice) if anatomy.CISTERN in tissues]
    ventricle_slices = [index for index, tissues in enumerate(per_slice) if anatomy.VENTRICLE in tissues]
    assert cistern_slices and ventricle_slices
    assert max(cistern_slices) < max(ventricle_slices)
    head_area = [(tissue_map != anatomy.AIR).sum() for tissue_map in rendered.tissue]
    assert head_area[-1] < 0.5 * max(head_area), "the head should narrow towards the vertex"


def test_heads_differ_between_patients(lesion_series):
    _, series = lesion_series
    centres = {tuple(np.round(plan.head.center, 3)) for plan, _ in series}
    rotations = {round(plan.head.rotation, 4) for plan, _ in series}
    widths = {round(plan.head.half_width, 3) for plan, _ in series}
    assert len(centres) == len(rotations) == len(widths) == len(series)


def _masks_of(series, subtype):
    column = SUBTYPES.index(subtype)
    for plan, rendered in series:
        for slice_index in np.flatnonzero(rendered.masks[:, column].any(axis=(1, 2))):
            yield plan, rendered, slice_index, rendered.masks[slice_index, column]


@pytest.mark.parametrize("subtype", ["epidural", "subdural"])
def test_extra_axial_bleeds_touch_inner_table(lesion_series, subtype):
    _, series = lesion_series
    checked = 0
    for _, rendered, slice_index, mask in _masks_of(series, subtype):
        if mask.sum() < 4:
            continue
        bone = rendered.tissue[slice_index] == anatomy.BONE
        assert (ndimage.binary_dilation(mask, iterations=1) & bone).any(), f"{subtype} on slice {slice_index} does not touch the skull"
        checked += 1
    assert checked >= 4


def test_epidural_is_thicker_and_shorter_than_subdural(lesion_series):
    _, series = lesion_series
    ratios = {}
    for subtype in ("epidural", "subdural"):
        values = []
        for plan, _, _, _ in _masks_of(series, subtype):
            lesion = next(lesion for lesion in plan.lesions if lesion.subtype == subtype)
            values.append(lesion.thickness / lesion.half_arc)
        ratios[subtype] = np.mean(values)
    assert ratios["epidural"] > 2 * ratios["subdural"]


def test_intraventricular_blood_inside_ventricle(lesion_series):
    _, series = lesion_series
    checked = 0
    for plan, rendered, slice_index, mask in _masks_of(series, "intraventricular"):
        ventricle = rendered.tissue[slice_index] == anatomy.VENTRICLE
        assert ventricle[mask].all()
        # The blood settles in the dependent, posterior part of the ventricle.
        x, y = anatomy.pixel_grid(plan.rows, plan.columns, plan.pixel_spacing)
        fields = anatomy.slice_fields(plan.head, float(slice_heights(plan)[slice_index]), x, y)
        assert fields.uy[mask].mean() > fields.uy[ventricle].mean()
        checked += 1
    assert checked >= 4


def test_intraparenchymal_clot_inside_parenchyma(lesion_series):
    _, series = lesion_series
    checked = 0
    for plan, rendered, slice_index, mask in _masks_of(series, "intraparenchymal"):
        tissue = rendered.tissue[slice_index]
        assert np.isin(tissue[mask], anatomy.PARENCHYMA).all()
        assert not (ndimage.binary_dilation(mask, iterations=1) & (tissue == anatomy.BONE)).any()
        if mask.sum() >= 20:
            # A darker rim of oedema surrounds the clot.
            ring = ndimage.binary_dilation(mask, iterations=2) & ~mask & np.isin(tissue, anatomy.PARENCHYMA)
            assert rendered.hu[slice_index][ring].mean() < plan.head.white_hu - 2
            checked += 1
    assert checked >= 2


def test_subarachnoid_blood_in_sulci_and_cisterns(lesion_series):
    _, series = lesion_series
    checked = 0
    for _, rendered, slice_index, mask in _masks_of(series, "subarachnoid"):
        csf_space = np.isin(rendered.tissue[slice_index], anatomy.SUBARACHNOID_SPACE)
        # Blood fills and slightly distends the CSF spaces, so every blood pixel lies within two
        # pixels of one (a sulcus narrower than a pixel can miss the pixel centres in places).
        assert (ndimage.binary_dilation(csf_space, iterations=2)[mask]).all()
        assert csf_space[mask].mean() >= 0.5
        checked += 1
    assert checked >= 4


def test_lesions_span_two_consecutive_slices(lesion_series):
    settings, series = lesion_series
    for plan, rendered in series:
        labels = slice_labels(rendered.masks, plan.pixel_spacing, settings.label_min_area_mm2)  # (N, 5)
        for lesion in plan.lesions:
            column = labels[:, SUBTYPES.index(lesion.subtype)]
            consecutive = column[1:] & column[:-1]
            assert consecutive.any(), f"{lesion.subtype} of patient {plan.index} is labelled on {column.sum()} slice(s) without a neighbour"


def test_blood_brightness_same_for_all_subtypes():
    settings = PhantomSettings(n_patients=12, seed=0, image_size=96, slices_per_series=(20, 24))
    values = {subtype: [] for subtype in SUBTYPES}
    for plan in plan_dataset(settings).series:
        rendered = render_series(plan)
        for column, subtype in enumerate(SUBTYPES):
            values[subtype].append(rendered.hu[rendered.masks[:, column]].astype(np.float64))
    pixels = {subtype: np.concatenate(chunks) for subtype, chunks in values.items()}
    means = np.array([pixels[subtype].mean() for subtype in SUBTYPES])
    p95 = np.array([np.percentile(pixels[subtype], 95) for subtype in SUBTYPES])
    assert all(50 <= mean <= 90 for mean in means)
    assert means.max() - means.min() <= 5.0, dict(zip(SUBTYPES, means.round(1)))
    assert p95.max() - p95.min() <= 5.0, dict(zip(SUBTYPES, p95.round(1)))
