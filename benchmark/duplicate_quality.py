"""How well the near-duplicate search does on real photos: planted copies found, distinct photos left alone.

    from benchmark import duplicate_quality as q
    quality = q.measure("../shared/data/cat_dog_small", "/tmp/dup_quality", per_kind=150)
    print(q.format_report(quality))

`measure` copies the photos into `work_dir`/src (their split and class
folders), plants beside `per_kind` of them a copy of each KIND (other photos
for each kind), converts that folder with the converter as convert.py does
(`--duplicates=report`, 2 workers) and sorts the pairs of its manifest: a
planted copy paired with its own photo is found; a copy paired with another
photo is a wrong pair; two photos of the folder paired are listed to be
looked at (a real copy in the data set, or a wrong pair). It then scores,
outside the search, the pairs of photos likeliest to be taken for copies
(`distinct`): how far below `likeness.SIMILARITY` distinct photos stay.
Nothing is written under the repository; `work_dir` is emptied first.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from pipeline.converter import conversion
from pipeline.converter import duplicates
from pipeline.converter import likeness

# Planted copies: what a copy of a photo in a data set often is.
RESIZE, RESIZED_QUALITY, BRIGHTEN, CROP, SAVED_QUALITY = 0.8, 80, 1.12, 0.04, 90


def _resized(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    size = (round(image.width * RESIZE), round(image.height * RESIZE))
    return image.resize(size, Image.Resampling.LANCZOS), RESIZED_QUALITY


def _brightened(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    return ImageEnhance.Brightness(image).enhance(BRIGHTEN), SAVED_QUALITY


def _cropped(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """CROP of the width and of the height off, split at random between the two sides."""
    cut_x, cut_y = round(image.width * CROP), round(image.height * CROP)
    left, top = int(rng.integers(0, cut_x + 1)), int(rng.integers(0, cut_y + 1))
    return image.crop((left, top, left + image.width - cut_x, top + image.height - cut_y)), SAVED_QUALITY


def _combined(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """Cropped, brightened, then resized and saved at RESIZED_QUALITY."""
    return _resized(_brightened(_cropped(image, rng)[0], rng)[0], rng)


# Kind -> (RGB image, rng) -> (the copy, its JPEG quality).
KINDS: dict[str, Callable[[Image.Image, np.random.Generator], tuple[Image.Image, int]]] = {
    "resized 80%, quality 80": _resized,
    "brightened 12%": _brightened,
    "cropped 4%": _cropped,
    "all three": _combined,
}


def copy_bytes(image: Image.Image, kind: str, rng: np.random.Generator) -> bytes:
    """A planted copy of a loaded image, of KINDS[kind], as JPEG bytes."""
    copy, quality = KINDS[kind](image.convert("RGB"), rng)
    out = io.BytesIO()
    copy.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclasses.dataclass(frozen=True)
class SeenPair:
    """A pair reported or scored: relative paths, hash distance, similarity, 64x64 grey correlation."""

    path: str
    original_path: str
    distance: int
    score: float | None
    correlation: float  # Pearson, of 64x64 grey thumbnails (box): the second look


@dataclasses.dataclass(frozen=True)
class Missed:
    """A planted copy not paired with its photo, and what the search saw of the two."""

    kind: str
    path: str
    distance: int
    details: float  # `likeness.details`: the gate's measure
    score: float  # `likeness.similarity`


@dataclasses.dataclass(frozen=True)
class Distinct:
    """The pairs of the data set's photos the search might take for copies (`distinct`)."""

    hash_candidates: int  # within HASH_RADIUS bits and reached by the look-ups: pairs by the hash alone
    hash_candidates_gated: int  # of those, past the gate (`likeness.details`)
    layouts_alike: int  # pairs whose 8x8 means correlate >= LAYOUT, whatever their hashes (all scored)
    closest: tuple[SeenPair, ...]  # the highest similarities of those, pairs reported left out


LAYOUT = 0.75  # the pairs of photos `distinct` scores all of: layouts alike, the hash's blind spot


@dataclasses.dataclass(frozen=True)
class Quality:
    """What `measure` found. Paths are relative to the folder converted."""

    photos: int
    planted: dict[str, int]  # kind -> copies planted
    found: dict[str, int]  # kind -> copies paired with their own photo
    lowest: dict[str, float]  # kind -> the lowest similarity of those pairs
    identical_pairs: int
    near_pairs: int
    wrong: tuple[SeenPair, ...]  # a planted copy paired with another photo
    among_photos: tuple[SeenPair, ...]  # two photos of the data set paired: to be looked at
    missed: tuple[Missed, ...]
    distinct: Distinct  # the data set's photos, pair by pair

    @property
    def recall(self) -> float:
        return sum(self.found.values()) / sum(self.planted.values())

    def precision(self, real_among_photos: int = 0) -> float:
        """Near pairs that are copies: the planted ones found, and those of `among_photos` judged real."""
        return (sum(self.found.values()) + real_among_photos) / max(self.near_pairs, 1)


def _plant(src: str, work_dir: str, per_kind: int, seed: int) -> tuple[str, dict[str, tuple[str, str]]]:
    """Copies the photos to `work_dir`/src and plants copies; returns the folder and
    copy -> (kind, its photo), relative paths."""
    folder = os.path.join(work_dir, "src")
    shutil.rmtree(work_dir, ignore_errors=True)
    photos = sorted(_files(src))
    for relpath in photos:
        os.makedirs(os.path.dirname(os.path.join(folder, relpath)), exist_ok=True)
        shutil.copyfile(os.path.join(src, relpath), os.path.join(folder, relpath))
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(photos))[: per_kind * len(KINDS)].reshape(len(KINDS), per_kind)
    planted = {}
    for kind_index, kind in enumerate(KINDS):
        for photo_index in chosen[kind_index]:
            relpath = photos[photo_index]
            copy = f"{os.path.splitext(relpath)[0]}.copy{kind_index}.jpg"
            with Image.open(os.path.join(src, relpath)) as image:
                data = copy_bytes(image, kind, rng)
            with open(os.path.join(folder, copy), "wb") as f:
                f.write(data)
            planted[copy] = (kind, relpath)
    return folder, planted


def _grey64(path: str) -> np.ndarray:
    """float64 [4096]: a 64x64 grey thumbnail (box filter), centred and of length 1."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.BOX), np.float64).ravel()
    pixels -= pixels.mean()
    return pixels / max(np.linalg.norm(pixels), 1e-9)


def _fingerprint(path: str) -> duplicates.Fingerprint:
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return duplicates.fingerprint(data, image)


def _pixels(print_: duplicates.Fingerprint) -> np.ndarray:
    return np.frombuffer(print_.thumbnail, np.uint8).reshape(likeness.THUMBNAIL_SIZE, likeness.THUMBNAIL_SIZE)


def _seen(folder: str, path: str, original: str, distance: int, score: float | None) -> SeenPair:
    correlation = float(_grey64(os.path.join(folder, path)) @ _grey64(os.path.join(folder, original)))
    return SeenPair(path, original, distance, score, correlation)


def _missed(folder: str, kind: str, copy: str, photo: str) -> Missed:
    mine, theirs = _fingerprint(os.path.join(folder, copy)), _fingerprint(os.path.join(folder, photo))
    if mine.phash is None or theirs.phash is None:
        return Missed(kind, copy, -1, float("nan"), float("nan"))
    details = float(likeness.details(_pixels(mine), _pixels(theirs)[None])[0])
    score = float(likeness.similarity(_pixels(mine), _pixels(theirs)[None])[0])
    return Missed(kind, copy, duplicates.distance(mine.phash, theirs.phash), details, score)


def distinct(folder: str, photos: Sequence[str], reported: set[frozenset[str]], shown: int = 5) -> Distinct:
    """How `photos` fare pair by pair, outside the search (see Distinct). A pair is reached
    by the look-ups of the later of the two in `photos`' order."""
    prints = [_fingerprint(os.path.join(folder, path)) for path in photos]
    kept = [i for i, print_ in enumerate(prints) if print_.phash is not None]
    pixels = np.array([_pixels(prints[i]) for i in kept])
    hashes = np.array([prints[i].phash for i in kept], np.uint64)
    means = pixels.reshape(len(kept), 8, -1, 8, pixels.shape[2] // 8).mean(axis=(2, 4)).reshape(len(kept), -1)
    means = means - means.mean(axis=1, keepdims=True)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-9)
    layouts = means @ means.T
    scored, alike, candidates, candidates_gated = [], 0, 0, 0
    for a in range(len(kept) - 1):
        differences = hashes[a + 1:] ^ hashes[a]
        near = [a + 1 + i for i in np.flatnonzero(np.bitwise_count(differences) <= duplicates.HASH_RADIUS)
                if duplicates.reachable(differences[i:i + 1], prints[kept[a + 1 + i]].uncertain)[0]]
        candidates += len(near)
        if near:
            candidates_gated += int((likeness.details(pixels[a], pixels[near]) >= likeness.GATE).sum())
        similar = a + 1 + np.flatnonzero(layouts[a, a + 1:] >= LAYOUT)
        alike += len(similar)
        for b in similar:
            if frozenset((photos[kept[a]], photos[kept[b]])) not in reported:
                scored.append((float(likeness.similarity(pixels[a], pixels[b][None])[0]), kept[a], kept[b]))
    scored.sort(reverse=True)
    closest = tuple(
        _seen(folder, photos[b], photos[a], duplicates.distance(prints[a].phash, prints[b].phash), score)
        for score, a, b in scored[:shown]
    )
    return Distinct(candidates, candidates_gated, alike, closest)


def measure(src: str, work_dir: str, per_kind: int = 150, seed: int = 0) -> Quality:
    """Plants copies of the photos of `src` in a copy of it under `work_dir`, converts it and
    sorts the pairs found (see the module's doc). About 15 seconds for 2,000 photos on 2 cores."""
    folder, planted = _plant(src, work_dir, per_kind, seed)
    summary = conversion.convert_folder(
        conversion.ConversionConfig(folder, os.path.join(work_dir, "records"), workers=2, data_report=False)
    )
    pairs = [(os.path.relpath(p.path, folder), os.path.relpath(p.original_path, folder), p)
             for p in summary.manifest.duplicates]
    found, lowest = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, float("nan"))
    wrong, among, paired = [], [], set()
    for path, original, pair in pairs:
        if pair.identical:
            continue
        copy = path if path in planted else original if original in planted else None
        if copy is None:
            among.append(_seen(folder, path, original, pair.distance, pair.score))
        elif {path, original} == {copy, planted[copy][1]}:
            kind = planted[copy][0]
            found[kind] += 1
            lowest[kind] = min(lowest[kind], pair.score) if found[kind] > 1 else pair.score
            paired.add(copy)
        else:
            wrong.append(_seen(folder, path, original, pair.distance, pair.score))
    missed = [_missed(folder, kind, copy, photo) for copy, (kind, photo) in planted.items() if copy not in paired]
    photos = sorted(_files(folder) - set(planted))
    reported = {frozenset((path, original)) for path, original, _ in pairs}
    return Quality(
        photos=len(photos),
        planted={kind: per_kind for kind in KINDS},
        found=found,
        lowest=lowest,
        identical_pairs=sum(pair.identical for _, _, pair in pairs),
        near_pairs=sum(not pair.identical for _, _, pair in pairs),
        wrong=tuple(wrong),
        among_photos=tuple(among),
        missed=tuple(missed),
        distinct=distinct(folder, photos, reported),
    )


def _files(folder: str) -> set[str]:
    """The relative paths of the JPEG and PNG files under `folder` (hidden ones left out)."""
    return {
        os.path.relpath(os.path.join(parent, name), folder)
        for parent, _, names in os.walk(folder)
        for name in names
        if not name.startswith(".") and name.lower().endswith((".jpg", ".jpeg", ".png"))
    }


def _row(pair: SeenPair) -> str:
    score = "-" if pair.score is None else f"{pair.score:.3f}"
    return (f"    {pair.path} = {pair.original_path}: hash distance {pair.distance}, similarity {score}, "
            f"64x64 grey correlation {pair.correlation:.2f}")


def format_report(quality: Quality) -> str:
    """The measurement as text: recall per kind, precision, the pairs to look at, the margins."""
    lines = [
        f"{quality.photos:,} photos, {sum(quality.planted.values()):,} planted copies; the search: hash distance "
        f"<= {duplicates.HASH_RADIUS}, gate {likeness.GATE}, similarity >= {likeness.SIMILARITY}",
        f"  {'kind':<26}{'planted':>8}{'found':>7}{'recall':>8}  lowest similarity found",
    ]
    for kind, planted in quality.planted.items():
        lines.append(f"  {kind:<26}{planted:>8}{quality.found[kind]:>7}{quality.found[kind] / planted:>8.1%}"
                     f"  {quality.lowest[kind]:.3f}")
    total = sum(quality.planted.values())
    lines.append(f"  {'all':<26}{total:>8}{sum(quality.found.values()):>7}{quality.recall:>8.1%}")
    lines.append(
        f"near pairs reported: {quality.near_pairs} ({quality.identical_pairs} byte-identical besides); "
        f"planted copies with their photo {sum(quality.found.values())}, with another photo {len(quality.wrong)}, "
        f"two photos of the data set {len(quality.among_photos)}; precision {quality.precision():.1%} counting "
        "those as wrong"
    )
    for title, rows in (("two photos of the data set paired (look at them):", quality.among_photos),
                        ("planted copies paired with another photo:", quality.wrong)):
        if rows:
            lines.append(title)
            lines.extend(_row(pair) for pair in rows)
    if quality.missed:
        lines.append("planted copies missed (hash distance, details, similarity to their photo):")
        lines.extend(f"    {m.kind}: {m.path}: {m.distance}, {m.details:.2f}, {m.score:.3f}" for m in quality.missed)
    lines.append(
        f"pairs of the data set's photos: {quality.distinct.hash_candidates} within {duplicates.HASH_RADIUS} bits "
        f"reached by the look-ups (pairs for the hash alone), {quality.distinct.hash_candidates_gated} of them past "
        f"the gate; {quality.distinct.layouts_alike:,} pairs whose 8x8 means correlate >= {LAYOUT}, whatever their "
        "hashes, have these highest similarities (pairs reported left out):"
    )
    lines.extend(_row(pair) for pair in quality.distinct.closest)
    return "\n".join(lines)
