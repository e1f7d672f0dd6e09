"""Synthetic lung nodules inserted into real chest CT, with exact ground truth, to train a detector.

A nodule is an ellipsoid whose radius is perturbed by low-order polynomial (spherical-harmonic-like) noise
for lobulation and by narrow radial bumps for spicules. Its HU follow its kind: solid (a core of about
-100..+100 HU), ground-glass (about -750..-500 HU) or part-solid (ground glass around a solid core). It is
rendered at ``supersampling``^3 points per voxel, so each voxel gets the fraction ``f`` of it the nodule
fills (partial volume), and is blended as ``HU = background * (1 - f) + nodule_HU * f``; noise matched to the
lung's is added where the nodule replaced the background, so the insert is not smoother than the scan.

Placement is in the lung mask: isolated nodules lie wholly in lung, clear of the pleura; juxtapleural ones
are centred about a radius from the mask boundary and flattened against it (the nodule is cut where the
mask ends); vascular ones sit on a thin bright structure (a vessel above ``vessel_hu``). Nodules keep a gap
to each other and to the reference nodules passed as ``avoid``. The recorded centre and diameter are
measured from the rendered occupancy itself (its centroid and equivalent-sphere diameter), so they are
exact for the voxels the detector sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage, special

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.detection.lung_mask import describe_source
from vesalius.transforms.crop_pad import foreground_box, shifted_affine

NoduleKind = Literal["solid", "part-solid", "ground-glass"]
Attachment = Literal["isolated", "vascular", "juxtapleural"]
FloatArray = npt.NDArray[np.float64]
Name = TypeVar("Name", bound=str)

__all__ = [
    "Attachment",
    "InsertedNodule",
    "InsertionSettings",
    "NoduleKind",
    "insert_nodules",
    "lung_noise_std",
    "nodule_label_map",
    "occupancy_map",
]


@dataclass(frozen=True)
class InsertionSettings:
    """What nodules to draw and how to place them; the defaults resemble a screening population."""

    diameter_range_mm: tuple[float, float] = (3.0, 30.0)
    diameter_median_mm: float = 6.0
    """Diameters are log-normal around this median, truncated to the range: most screening nodules are small."""
    diameter_log_sigma: float = 0.6
    kind_weights: Mapping[NoduleKind, float] = field(
        default_factory=lambda: {"solid": 0.65, "part-solid": 0.15, "ground-glass": 0.2}
    )
    attachment_weights: Mapping[Attachment, float] = field(
        default_factory=lambda: {"isolated": 0.5, "vascular": 0.25, "juxtapleural": 0.25}
    )
    solid_hu: tuple[float, float] = (-100.0, 100.0)
    ground_glass_hu: tuple[float, float] = (-750.0, -500.0)
    core_fraction: tuple[float, float] = (0.35, 0.65)
    """Radius of a part-solid nodule's solid core, as a fraction of the nodule's."""
    axis_ratio: tuple[float, float] = (0.75, 1.0)
    lobulation: float = 0.12
    """Largest RMS radial perturbation, as a fraction of the radius."""
    spiculation_probability: float = 0.2
    texture_hu: float = 15.0
    """Standard deviation of the smooth HU texture inside a nodule (doubled for ground glass)."""
    noise_std_hu: float | None = None
    """Noise added over the nodule; None estimates it from the lung (``lung_noise_std``), 0 adds none."""
    supersampling: int = 3
    min_gap_mm: float = 2.0
    vessel_hu: float = -300.0
    max_attempts: int = 200

    def __post_init__(self) -> None:
        low, high = self.diameter_range_mm
        if not 0 < low <= high:
            raise InputError(f"nodule diameter_range_mm must be (low, high) with 0 < low <= high; got {low, high}")
        if self.supersampling < 1:
            raise InputError(f"nodule supersampling must be >= 1 per axis; got {self.supersampling}")
        for name, weights in (("kind_weights", self.kind_weights), ("attachment_weights", self.attachment_weights)):
            if not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
                raise InputError(f"nodule {name} need non-negative weights with a positive sum; got {dict(weights)}")


@dataclass(frozen=True, eq=False)
class InsertedNodule:
    """One inserted nodule and its exact ground truth on the volume's grid."""

    centre: tuple[float, float, float]
    """Centroid of the fractional occupancy, LPS mm."""
    diameter_mm: float
    """Diameter of the sphere holding the rendered volume."""
    volume_mm3: float
    kind: NoduleKind
    attachment: Attachment
    nominal_diameter_mm: float
    """The diameter drawn before shape perturbation and cutting at the pleura."""
    solid_hu: float | None
    """HU of the solid part (solid and part-solid), None for pure ground glass."""
    ground_glass_hu: float | None
    """HU of the ground-glass part (ground-glass and part-solid)."""
    offset: tuple[int, int, int]
    """Voxel index of ``occupancy[0, 0, 0]`` in the volume."""
    occupancy: npt.NDArray[np.float32]
    """Fraction of each voxel of the box the nodule fills, 0..1."""


def _fibonacci_sphere(count: int) -> FloatArray:
    """Nearly uniform unit vectors, to find the extremes of a radial function."""
    n = np.arange(count, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * n / count
    phi = np.pi * (1.0 + 5.0**0.5) * n
    ring = np.sqrt(1.0 - z**2)
    return np.stack([ring * np.cos(phi), ring * np.sin(phi), z], axis=1)


_EXPONENTS = np.array(
    [(a, b, d - a - b) for d in (2, 3, 4) for a in range(d + 1) for b in range(d + 1 - a)], dtype=np.int64
)
"""Monomials x^a y^b z^c of degree 2-4: on the unit sphere they span the spherical harmonics of those degrees."""


@dataclass(frozen=True, eq=False)
class _Shape:
    """One nodule's geometry and HU: a rotated ellipsoid with a perturbed radius, in mm."""

    kind: NoduleKind
    mean_radius_mm: float
    rotation: FloatArray
    """Columns are the ellipsoid's axes in LPS."""
    axes: FloatArray
    """Relative semi-axes, product 1, so the volume follows the mean radius."""
    lobulation: float
    coefficients: FloatArray
    offset: float
    """Mean of the polynomial over the sphere, subtracted so the mean radius factor stays 1."""
    spike_directions: FloatArray
    spike_heights: FloatArray
    spike_widths: FloatArray
    g_min: float
    g_max: float
    core_fraction: float
    solid_hu: float | None
    ground_glass_hu: float | None

    @property
    def bounding_radius_mm(self) -> float:
        return self.mean_radius_mm * float(self.axes.max()) * self.g_max

    def radial(self, unit: FloatArray) -> FloatArray:
        """Surface radius factor g(u) along unit vectors (N, 3) of the ellipsoid's frame."""
        powers = np.ones((unit.shape[0], 3, 5))
        for degree in range(1, 5):
            powers[:, :, degree] = powers[:, :, degree - 1] * unit
        terms = powers[:, 0, _EXPONENTS[:, 0]] * powers[:, 1, _EXPONENTS[:, 1]] * powers[:, 2, _EXPONENTS[:, 2]]
        g = 1.0 + self.lobulation * np.clip(terms @ self.coefficients - self.offset, -2.5, 2.5)
        if self.spike_heights.size:
            cosine = unit @ self.spike_directions.T
            g = g + (self.spike_heights * np.exp(-(1.0 - cosine) / self.spike_widths)).sum(axis=1)
        return np.asarray(np.maximum(g, 0.4), dtype=np.float64)

    def _hu(self, in_core: npt.NDArray[np.bool_]) -> FloatArray | float:
        if self.kind == "solid":
            return float(self.solid_hu or 0.0)
        if self.kind == "ground-glass":
            return float(self.ground_glass_hu or 0.0)
        return np.where(in_core, float(self.solid_hu or 0.0), float(self.ground_glass_hu or 0.0))

    def render(
        self, centre: FloatArray, affine: FloatArray, start: Sequence[int], stop: Sequence[int], factor: int
    ) -> tuple[FloatArray, FloatArray]:
        """Fractional occupancy f and f x nodule HU on the voxel box [start, stop), at factor^3 points a voxel."""
        shape = tuple(int(b - a) for a, b in zip(start, stop, strict=True))
        base = np.indices(shape).reshape(3, -1).T + np.asarray(start, dtype=np.float64)
        count = np.zeros(base.shape[0])
        hu_sum = np.zeros(base.shape[0])
        steps = (np.arange(factor) + 0.5) / factor - 0.5
        radius = self.mean_radius_mm
        core = self.core_fraction if self.kind == "part-solid" else 1.0
        lower = radius * self.g_min * core  # below this every point is inside (and in the core)
        for offset in product(steps, repeat=3):
            world = (base + np.asarray(offset)) @ affine[:3, :3].T + affine[:3, 3]
            frame = ((world - centre) @ self.rotation) / self.axes
            r = np.linalg.norm(frame, axis=1)
            surface = np.where(r <= lower, np.inf, 0.0)  # surely inside; beyond the band, surely outside
            band = (r > lower) & (r <= radius * self.g_max)
            surface[band] = radius * self.radial(frame[band] / r[band, None])
            inside = r <= surface
            count += inside
            hu_sum += inside * self._hu(r <= core * surface)
        scale = float(factor**3)
        return (count / scale).reshape(shape), (hu_sum / scale).reshape(shape)


def _random_shape(rng: np.random.Generator, kind: NoduleKind, diameter: float, settings: InsertionSettings) -> _Shape:
    """Draw a nodule's shape and HU; the radial extremes are found on a dense sphere and padded by 5%."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rotation = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] = -rotation[:, 0]
    ratios = np.array([1.0, *rng.uniform(settings.axis_ratio[0], settings.axis_ratio[1], size=2)])
    raw = rng.standard_normal(len(_EXPONENTS)) / _EXPONENTS.sum(axis=1)  # low orders dominate: lobes, not ripples
    sphere = _fibonacci_sphere(4000)
    terms = np.prod(sphere[:, None, :] ** _EXPONENTS[None, :, :], axis=2) @ raw
    rms = max(float(terms.std()), 1e-12)  # scaled so ``lobulation`` is the RMS radial change, around 1
    spiculated = kind != "ground-glass" and diameter >= 6.0 and rng.random() < settings.spiculation_probability
    spikes = int(rng.integers(3, 9)) if spiculated else 0
    directions = rng.standard_normal((spikes, 3))
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    shape = _Shape(
        kind=kind,
        mean_radius_mm=diameter / 2.0,
        rotation=rotation,
        axes=ratios / np.prod(ratios) ** (1.0 / 3.0),
        lobulation=float(rng.uniform(0.3, 1.0) * settings.lobulation),
        coefficients=raw / rms,
        offset=float(terms.mean()) / rms,
        spike_directions=directions,
        spike_heights=rng.uniform(0.4, 1.2, size=spikes),
        spike_widths=rng.uniform(0.01, 0.03, size=spikes),
        g_min=1.0,
        g_max=1.0,
        core_fraction=float(rng.uniform(*settings.core_fraction)),
        solid_hu=float(rng.uniform(*settings.solid_hu)) if kind != "ground-glass" else None,
        ground_glass_hu=float(rng.uniform(*settings.ground_glass_hu)) if kind != "solid" else None,
    )
    g = shape.radial(np.concatenate([sphere, directions]))
    return replace(shape, g_min=float(g.min()) * 0.95, g_max=float(g.max()) * 1.05)


@dataclass
class _Scene:
    """What placement needs from the volume, computed once: distances in the lung, vessels, taken space."""

    mask: npt.NDArray[np.bool_]
    inside_mm: npt.NDArray[np.float32]
    """Distance (mm) from each lung voxel's centre to the nearest voxel outside the mask."""
    pleura: npt.NDArray[np.bool_]
    """Lung voxels with a face on a non-lung voxel: the mask's boundary."""
    vessel: npt.NDArray[np.bool_]
    thin_vessel: npt.NDArray[np.bool_]
    affine: FloatArray
    spacing: FloatArray
    taken: list[tuple[FloatArray, float]]


def lung_noise_std(volume: Volume, mask: Volume | npt.ArrayLike) -> float:
    """Noise standard deviation (HU) in lung parenchyma, from in-plane second differences (robust MAD).

    Vessels are excluded by keeping parenchyma below -600 HU; second differences cancel smooth anatomy,
    and for white noise of std s their std is s * sqrt(6).
    """
    lungs = _mask_array(volume, mask)
    hu = np.asarray(volume.array, dtype=np.float32)
    estimates = []
    for axis in (0, 1):
        centre = [slice(1, -1) if a == axis else slice(None) for a in range(3)]
        before = [slice(0, -2) if a == axis else slice(None) for a in range(3)]
        after = [slice(2, None) if a == axis else slice(None) for a in range(3)]
        second = 2.0 * hu[tuple(centre)] - hu[tuple(before)] - hu[tuple(after)]
        keep = lungs[tuple(centre)] & lungs[tuple(before)] & lungs[tuple(after)] & (hu[tuple(centre)] < -600)
        values = second[keep]
        if values.size:
            estimates.append(1.4826 * float(np.median(np.abs(values - np.median(values)))) / np.sqrt(6.0))
    return float(np.mean(estimates)) if estimates else 0.0


def _mask_array(volume: Volume, mask: Volume | npt.ArrayLike) -> npt.NDArray[np.bool_]:
    if isinstance(mask, Volume):
        if not volume.same_grid(mask):
            raise InputError(
                f"{describe_source(volume)}: the lung mask lies on another grid ({mask.describe()}) "
                f"than the CT ({volume.describe()})"
            )
        mask = mask.array
    array = np.asarray(mask).astype(bool)
    if array.shape != volume.shape:
        raise InputError(
            f"{describe_source(volume)}: lung mask shape {array.shape} differs from the CT's {volume.shape}"
        )
    return array


def _scene(volume: Volume, mask: npt.NDArray[np.bool_], settings: InsertionSettings) -> _Scene:
    """Distances in the lung, the pleura and the vessels of the lungs' box, computed once per call."""
    hu = np.asarray(volume.array, dtype=np.float64)
    spacing = volume.spacing
    inside = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    vessel = mask & (hu > settings.vessel_hu)
    size = np.maximum(3, np.round(7.0 / spacing).astype(int) | 1)
    crowd = ndimage.uniform_filter(vessel.astype(np.float32), size=tuple(int(s) for s in size))
    return _Scene(
        mask=mask,
        inside_mm=inside.astype(np.float32),
        pleura=mask & ~ndimage.binary_erosion(mask, border_value=0),
        vessel=vessel,
        thin_vessel=vessel & (crowd < 0.35),  # thin, tubular: a vessel fills little of its neighbourhood
        affine=volume.affine,
        spacing=spacing,
        taken=[],
    )


def _choice(rng: np.random.Generator, weights: Mapping[Name, float]) -> Name:
    names = sorted(weights)
    p = np.asarray([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _diameter(rng: np.random.Generator, settings: InsertionSettings) -> float:
    """A log-normal diameter truncated to the range, drawn by inverting the truncated CDF (no rejection loop)."""
    low, high = settings.diameter_range_mm
    if settings.diameter_log_sigma <= 0 or low == high:
        return float(np.clip(settings.diameter_median_mm, low, high))
    mu, sigma = np.log(settings.diameter_median_mm), settings.diameter_log_sigma
    bounds = special.ndtr((np.log([low, high]) - mu) / sigma)
    if bounds[1] - bounds[0] < 1e-12:  # the range lies far in a tail: its nearer end
        return float(low if bounds[0] > 0.5 else high)
    value = float(np.exp(mu + sigma * special.ndtri(rng.uniform(bounds[0], bounds[1]))))
    return float(np.clip(value, low, high))


def _random_voxel(rng: np.random.Generator, candidates: npt.NDArray[np.bool_]) -> FloatArray | None:
    """A random voxel of ``candidates``, jittered within the voxel, as a continuous index; None if empty."""
    flat = np.flatnonzero(candidates)
    if flat.size == 0:
        return None
    index = np.asarray(np.unravel_index(flat[int(rng.integers(flat.size))], candidates.shape), dtype=np.float64)
    return index + rng.uniform(-0.5, 0.5, size=3)


def _to_world(scene: _Scene, index: FloatArray) -> FloatArray:
    return np.asarray(scene.affine[:3, :3] @ index + scene.affine[:3, 3], dtype=np.float64)


def _propose(rng: np.random.Generator, scene: _Scene, attachment: Attachment, shape: _Shape) -> FloatArray | None:
    """A candidate centre (LPS mm) for a nodule of this attachment, or None when the lung has no room."""
    # clear of the pleura voxels even for the partly filled voxels at the nodule's edge
    clearance = shape.bounding_radius_mm + float(np.linalg.norm(scene.spacing)) / 2.0 + float(scene.spacing.max()) + 0.5
    if attachment == "isolated":
        index = _random_voxel(rng, scene.inside_mm >= clearance)
        return None if index is None else _to_world(scene, index)
    if attachment == "juxtapleural":
        depth = shape.mean_radius_mm * rng.uniform(0.5, 0.85)
        half = 0.5 * float(scene.spacing.max())
        upper = max(depth + half, 1.01 * float(scene.spacing.min()))  # the pleura voxels at least
        index = _random_voxel(rng, scene.mask & (scene.inside_mm <= upper) & (scene.inside_mm >= depth - half))
        return None if index is None else _to_world(scene, index)
    index = _random_voxel(rng, scene.thin_vessel & (scene.inside_mm >= clearance))
    if index is None:
        return None
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    return _to_world(scene, index) + direction * shape.mean_radius_mm * rng.uniform(0.3, 0.9)


def _free(scene: _Scene, centre: FloatArray, radius: float, gap: float) -> bool:
    return all(float(np.linalg.norm(centre - other)) >= radius + r + gap for other, r in scene.taken)


def _box(scene: _Scene, centre: FloatArray, radius: float) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    inverse = np.linalg.inv(scene.affine)
    index = inverse[:3, :3] @ centre + inverse[:3, 3]
    reach = radius * np.linalg.norm(inverse[:3, :3], axis=1)
    low = np.clip(np.floor(index - reach), 0, scene.mask.shape).astype(int)
    high = np.clip(np.ceil(index + reach) + 1, 0, scene.mask.shape).astype(int)
    return (int(low[0]), int(low[1]), int(low[2])), (int(high[0]), int(high[1]), int(high[2]))


def _fits(scene: _Scene, attachment: Attachment, box: tuple[slice, ...], occupied: npt.NDArray[np.bool_]) -> bool:
    """Whether a rendered nodule is what its attachment says: on the pleura, on a vessel, or clear of both."""
    if not occupied.any():
        return False
    touches_pleura = bool((scene.pleura[box] & occupied).any())
    vessel_share = float(scene.vessel[box][occupied].mean())
    if attachment == "juxtapleural":
        return touches_pleura
    if attachment == "vascular":
        return not touches_pleura and vessel_share > 0.0
    return not touches_pleura and vessel_share <= 0.05


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> FloatArray:
    """Gaussian-correlated noise with unit standard deviation (CT noise and nodule texture are not white)."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    std = float(field_.std())
    return np.asarray(field_ / std if std > 0 else field_, dtype=np.float64)


def _record(
    scene: _Scene, shape: _Shape, attachment: Attachment, start: tuple[int, int, int], occupancy: FloatArray
) -> InsertedNodule:
    voxel_mm3 = float(abs(np.linalg.det(scene.affine[:3, :3])))
    total = float(occupancy.sum())
    indices = np.indices(occupancy.shape).reshape(3, -1).T + np.asarray(start)
    centroid = (occupancy.reshape(-1) @ indices) / total
    centre = _to_world(scene, centroid)
    volume_mm3 = total * voxel_mm3
    return InsertedNodule(
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        diameter_mm=float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0)),
        volume_mm3=volume_mm3,
        kind=shape.kind,
        attachment=attachment,
        nominal_diameter_mm=2.0 * shape.mean_radius_mm,
        solid_hu=shape.solid_hu,
        ground_glass_hu=shape.ground_glass_hu,
        offset=start,
        occupancy=occupancy.astype(np.float32),
    )


def _place(
    rng: np.random.Generator, scene: _Scene, out: FloatArray, settings: InsertionSettings, noise_std: float
) -> InsertedNodule | None:
    """Draw one nodule and try to place it; the volume ``out`` is changed only on success."""
    kind = _choice(rng, settings.kind_weights)
    attachment = _choice(rng, settings.attachment_weights)
    shape = _random_shape(rng, kind, _diameter(rng, settings), settings)
    for _ in range(settings.max_attempts):
        centre = _propose(rng, scene, attachment, shape)
        if centre is None:
            return None
        if not _free(scene, centre, shape.bounding_radius_mm, settings.min_gap_mm):
            continue
        start, stop = _box(scene, centre, shape.bounding_radius_mm)
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        fraction, nodule_hu = shape.render(centre, scene.affine, start, stop, settings.supersampling)
        lung = scene.mask[box]
        fraction, nodule_hu = fraction * lung, nodule_hu * lung  # flattened against the pleura, never outside
        if not _fits(scene, attachment, box, fraction > 0):
            continue
        texture = settings.texture_hu * (2.0 if kind == "ground-glass" else 1.0)
        nodule_hu = nodule_hu + texture * fraction * _smooth_field(rng, fraction.shape, 1.0)
        background = out[box]
        blended = background * (1.0 - fraction) + nodule_hu
        if noise_std > 0:  # restore the noise variance the blend took away: (1-f)^2 + g^2 = 1
            gain = np.sqrt(np.clip(1.0 - (1.0 - fraction) ** 2, 0.0, 1.0))
            blended = blended + noise_std * gain * _smooth_field(rng, fraction.shape, 0.6)
        out[box] = np.where(fraction > 0, blended, background)
        record = _record(scene, shape, attachment, start, fraction)
        scene.taken.append((np.asarray(record.centre), shape.bounding_radius_mm))
        return record
    return None


def insert_nodules(
    volume: Volume,
    lung_mask: Volume | npt.ArrayLike,
    count: int,
    rng: np.random.Generator | int | None = None,
    settings: InsertionSettings | None = None,
    avoid: Sequence[tuple[Sequence[float], float]] = (),
) -> tuple[Volume, list[InsertedNodule]]:
    """Insert ``count`` nodules into the lungs of a CT in HU; returns the new CT (float32) and their truth.

    ``avoid`` lists (centre LPS mm, diameter mm) of nodules already there (the reference standard), kept
    clear of. The same ``rng`` seed gives the same volume. Raises ``InputError`` when the lungs cannot hold
    ``count`` nodules as drawn.
    """
    options = settings or InsertionSettings()
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if count < 0:
        raise InputError(f"{describe_source(volume)}: nodule count must be >= 0; got {count}")
    mask = _mask_array(volume, lung_mask)
    if count and not mask.any():
        raise InputError(f"{describe_source(volume)}: the lung mask is empty, so no nodule can be placed in lung")
    out = np.array(volume.array, dtype=np.float32)
    if count == 0:
        return volume.with_array(out), []
    # nodules are cut at the mask, so everything happens in the mask's box (a third of a chest CT)
    start, stop = foreground_box(mask, (1, 1, 1))
    region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    local = Volume(np.asarray(volume.array[region], dtype=np.float64), shifted_affine(volume.affine, start))
    scene = _scene(local, mask[region], options)
    scene.taken.extend((np.asarray(c, dtype=np.float64), float(d) / 2.0) for c, d in avoid)
    noise = options.noise_std_hu if options.noise_std_hu is not None else lung_noise_std(local, mask[region])
    work = np.array(local.array, dtype=np.float64)
    nodules: list[InsertedNodule] = []
    for number in range(count):
        placed = None
        for _ in range(4):  # a nodule that does not fit is redrawn (new size, kind, attachment)
            placed = _place(generator, scene, work, options, noise)
            if placed is not None:
                break
        if placed is None:
            raise InputError(
                f"{describe_source(volume)}: could place only {number} of {count} nodules in the lung mask "
                f"({np.count_nonzero(mask)} voxels); ask for fewer or smaller nodules"
            )
        offset = tuple(o + s for o, s in zip(placed.offset, start, strict=True))
        nodules.append(replace(placed, offset=(offset[0], offset[1], offset[2])))
    out[region] = work
    return volume.with_array(out), nodules


def occupancy_map(grid: Volume, nodules: Sequence[InsertedNodule]) -> Volume:
    """The nodules' fractional occupancy (0..1, float32) on ``grid``: a soft target or a partial-volume truth."""
    array = np.zeros(grid.shape, dtype=np.float32)
    for nodule in nodules:
        box = tuple(slice(o, o + n) for o, n in zip(nodule.offset, nodule.occupancy.shape, strict=True))
        array[box] = np.maximum(array[box], nodule.occupancy)
    return grid.with_array(array)


def nodule_label_map(grid: Volume, nodules: Sequence[InsertedNodule], threshold: float = 0.5) -> Volume:
    """Label map (uint16; nodule n is n + 1) of voxels the nodule fills at least ``threshold`` of."""
    array = np.zeros(grid.shape, dtype=np.uint16)
    for number, nodule in enumerate(nodules, start=1):
        box = tuple(slice(o, o + n) for o, n in zip(nodule.offset, nodule.occupancy.shape, strict=True))
        array[box][nodule.occupancy >= threshold] = number
    return grid.with_array(array)
