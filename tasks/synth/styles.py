"""What each synthetic cell line looks like: morphology and phase-contrast appearance as data.

The numbers are tuned so that the generated set lands near the morphology table of issue 2 (measured on real
LIVECell): cells per image, median cell area, solidity, circularity and cover fraction. Generation code in
:mod:`tasks.synth.shapes` and :mod:`tasks.synth.render` reads only these fields, so a line's look is changed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.catalogue import CellLine


@dataclass(frozen=True)
class Style:
    # --- population: density grows geometrically from the first to the last timepoint -------------------------------
    cells: tuple[int, int]  # cells per image at the first and at the last timepoint
    days: int  # timepoints run 00d00h .. <days>d00h in 4 h steps
    # --- placement ---------------------------------------------------------------------------------------------------
    p_new_cluster: float  # chance that a cell starts a new cluster instead of budding off an existing cell
    spacing: float  # centre distance to a neighbour, in units of the two radii summed (< 1 packs cells into polygons)
    tries: int  # candidate spots per cell before it is dropped (more: denser packing at confluence)
    # --- shape: a star-shaped body clipped against neighbours, plus thin spikes --------------------------------------
    area: float  # median body area (px) before clipping
    area_sigma: float  # log-normal spread of body area
    aspect: float  # median major/minor axis ratio
    roughness: float  # amplitude of low-order radial harmonics (lobes, polygonal corners)
    jitter: float  # per-vertex radial noise, as a hand-traced outline has
    spikes: float  # mean number of thin processes (neurites, filopodia) per cell
    spike_length: tuple[float, float]  # process length range, in body radii
    spike_width: float  # process half-width at its base (px)
    spike_branch: float  # chance that a process forks into two tips
    fill: float  # rays ending within this factor of a neighbour's bisector grow up to it (1: no growth)
    # --- appearance (grey levels around the background of 128) -------------------------------------------------------
    texture: float  # std of the band-passed interior texture
    texture_scale: float  # grain size (px) of the texture
    faint: float  # share of the cell interior that is flat, untextured cytoplasm (patches, as real flat cells show)
    patch_scale: float  # size (px) of those flat patches
    centred: float  # how strongly the flat patches gather at the rim (texture around the nucleus), 0: anywhere
    granules: float  # dark granules per 100 px of cell area
    interior: float  # mean interior offset (negative: dark body)
    edge: float  # dark line just inside the outline
    halo: float  # bright halo just outside the outline
    halo_width: float  # its decay length (px)
    inner_halo: float  # bright ring inside the outline (the mask includes it: SkBr3)
    nucleus: float  # contrast of a visible nucleus outline and nucleoli (0: none)
    mitotic: float  # fraction of cells drawn as small, round, bright mitotic cells


STYLES: dict[str, Style] = {
    "A172": Style(
        cells=(150, 200), days=3, p_new_cluster=0.35, spacing=0.9, tries=12,
        area=1100, area_sigma=0.5, aspect=1.8, roughness=0.12, jitter=0.04,
        spikes=0.9, spike_length=(0.5, 1.5), spike_width=2.5, spike_branch=0.2, fill=1.0,
        texture=9, texture_scale=0.8, faint=0.5, patch_scale=6, centred=2.5, granules=0.8, interior=-1, edge=8, halo=10, halo_width=1.2,
        inner_halo=0, nucleus=0, mitotic=0.0,
    ),
    "BT-474": Style(
        cells=(150, 250), days=4, p_new_cluster=0.05, spacing=0.85, tries=8,
        area=560, area_sigma=0.35, aspect=1.8, roughness=0.22, jitter=0.07,
        spikes=0.0, spike_length=(0, 0), spike_width=0, spike_branch=0, fill=1.0,
        texture=12, texture_scale=1.0, faint=0.25, patch_scale=5, centred=0, granules=2.5, interior=-2, edge=8, halo=10, halo_width=1.5,
        inner_halo=0, nucleus=0, mitotic=0.03,
    ),
    "BV-2": Style(
        cells=(50, 800), days=3, p_new_cluster=0.12, spacing=0.95, tries=8,
        area=195, area_sigma=0.3, aspect=1.15, roughness=0.1, jitter=0.06,
        spikes=0.0, spike_length=(0, 0), spike_width=0, spike_branch=0, fill=1.0,
        texture=10, texture_scale=1.0, faint=0, patch_scale=0, centred=0, granules=1.0, interior=-10, edge=10, halo=28, halo_width=1.6,
        inner_halo=0, nucleus=0, mitotic=0.0,
    ),
    "Huh7": Style(
        cells=(45, 80), days=3, p_new_cluster=0.4, spacing=0.95, tries=8,
        area=1050, area_sigma=0.4, aspect=1.8, roughness=0.15, jitter=0.04,
        spikes=0.0, spike_length=(0, 0), spike_width=0, spike_branch=0, fill=1.15,
        texture=11, texture_scale=1.2, faint=0.75, patch_scale=6, centred=2.5, granules=0.8, interior=-1, edge=6, halo=8, halo_width=1.5,
        inner_halo=0, nucleus=10, mitotic=0.02,
    ),
    "MCF7": Style(
        cells=(100, 800), days=3, p_new_cluster=0.03, spacing=0.8, tries=8,
        area=330, area_sigma=0.3, aspect=1.9, roughness=0.2, jitter=0.05,
        spikes=0.0, spike_length=(0, 0), spike_width=0, spike_branch=0, fill=1.0,
        texture=12, texture_scale=1.0, faint=0.1, patch_scale=4, centred=0, granules=1.5, interior=-1, edge=10, halo=12, halo_width=1.2,
        inner_halo=0, nucleus=8, mitotic=0.02,
    ),
    "SH-SY5Y": Style(
        cells=(260, 400), days=3, p_new_cluster=0.2, spacing=1.0, tries=20,
        area=290, area_sigma=0.8, aspect=1.5, roughness=0.08, jitter=0.03,
        spikes=1.2, spike_length=(1.0, 2.5), spike_width=2.0, spike_branch=0.35, fill=1.0,
        texture=10, texture_scale=1.0, faint=0.2, patch_scale=4, centred=1.0, granules=1.2, interior=-1, edge=8, halo=10, halo_width=1.2,
        inner_halo=0, nucleus=0, mitotic=0.0,
    ),
    "SkBr3": Style(
        cells=(170, 300), days=3, p_new_cluster=0.5, spacing=1.05, tries=8,
        area=300, area_sigma=0.45, aspect=1.08, roughness=0.02, jitter=0.03,
        spikes=0.0, spike_length=(0, 0), spike_width=0, spike_branch=0, fill=1.0,
        texture=10, texture_scale=1.0, faint=0.2, patch_scale=4, centred=0, granules=1.5, interior=-6, edge=14, halo=6, halo_width=1.0,
        inner_halo=30, nucleus=0, mitotic=0.0,
    ),
    "SK-OV-3": Style(
        cells=(60, 380), days=3, p_new_cluster=0.25, spacing=0.6, tries=40,
        area=1650, area_sigma=0.4, aspect=1.7, roughness=0.15, jitter=0.04,
        spikes=0.6, spike_length=(0.4, 1.2), spike_width=3.0, spike_branch=0.1, fill=1.1,
        texture=5, texture_scale=1.5, faint=0.5, patch_scale=6, centred=2.0, granules=0.3, interior=0, edge=5, halo=7, halo_width=1.5,
        inner_halo=0, nucleus=10, mitotic=0.04,
    ),
}


def style_of(line: CellLine) -> Style:
    return STYLES[line.name]
