"""Omniglot: find or download the archives, preprocess once to 28x28, cache, and split.

Downloads use urllib and hashlib, not torchvision.datasets.utils, and the package does not depend on
torchvision: its download_url writes straight to the final file (an interrupted download would
leave half an archive where this module writes a .part file and renames it), retries a failed
https download over plain http, and probes redirects with an extra request; extract_archive has
nothing to do here, because the zip members are read directly. Wrapping it to keep these guarantees
would take as many lines as it saves, and torchvision must match torch's version exactly.

The vinyals split is the published one: the character lists of jakesnell/prototypical-networks
(data/omniglot/splits/vinyals, MIT License, Copyright (c) 2017 Jake Snell), shipped in
fastadapt/splits/ with one Alphabet/characterNN a line (each character is 4 classes, its rotations).
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checks import one_of

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
SUBSETS = ("images_background", "images_evaluation")
N_DRAWERS = 20
CACHE_VERSION = 2  # 2: keyed to its source
PARTS = ("train", "val", "trainval", "test")
ROTATIONS = ("rot000", "rot090", "rot180", "rot270")  # counter-clockwise quarter turns, as torch.rot90 and PIL


class DatasetError(RuntimeError):
    """The Omniglot data could not be found, downloaded or read."""


@dataclass
class Omniglot:
    """All 1,623 characters x 20 drawers as one uint8 tensor plus metadata."""

    images: torch.Tensor  # (1623, 20, 28, 28) uint8, strokes bright (255) on a dark (0) background
    alphabets: list[str]  # alphabet name of each character
    characters: list[str]  # "Alphabet/characterNN" of each character
    background: torch.Tensor  # (1623,) bool, True for images_background (Lake's training set)

    def __len__(self) -> int:
        return self.images.shape[0]


def cache_dir() -> Path:
    """Folder for downloads and the preprocessed tensor: $FASTADAPT_CACHE or ~/.cache/fastadapt."""
    return Path(os.environ.get("FASTADAPT_CACHE", Path.home() / ".cache" / "fastadapt")).expanduser()


def cache_file() -> Path:
    """The preprocessed 28x28 tensor file inside cache_dir()."""
    return cache_dir() / f"omniglot28_v{CACHE_VERSION}.pt"


def md5sum(path: Path) -> str:
    """MD5 hex digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, path: Path) -> None:
    """Stream url into path through a .part file, so an interrupted download leaves nothing behind."""
    from tqdm import tqdm

    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def download_omniglot(dest: Path, base_url: str = OMNIGLOT_URL, md5: dict[str, str] | None = None) -> Path:
    """Download the two official Omniglot archives into dest and check their MD5s."""
    md5 = OMNIGLOT_MD5 if md5 is None else md5
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for subset in SUBSETS:
        archive = dest / f"{subset}.zip"
        if archive.exists() and md5sum(archive) == md5[subset]:
            continue
        try:
            _fetch(f"{base_url}/{subset}.zip", archive)
        except (OSError, ValueError) as err:  # no network, HTTP error, bad URL, ...
            raise DatasetError(
                f"Could not download {base_url}/{subset}.zip ({err}). Download the two Omniglot archives "
                f"by hand into a folder and set FASTADAPT_DATA to it."
            ) from err
        if md5sum(archive) != md5[subset]:
            archive.unlink()
            raise DatasetError(
                f"{archive.name} from {base_url} failed its MD5 check (expected {md5[subset]}); "
                "the download was removed, try again."
            )
    return dest


def _subset_source(root: Path, subset: str) -> Path | None:
    """The extracted folder or the zip archive of one subset under root, if present."""
    for candidate in (root / subset, root / "omniglot-py" / subset):
        if candidate.is_dir():
            return candidate
    archive = root / f"{subset}.zip"
    return archive if archive.is_file() else None


def find_omniglot(root: str | Path | None = None, download: bool = True) -> Path:
    """Folder holding both Omniglot subsets: root, else $FASTADAPT_DATA, else the cache (downloading)."""
    looked = []
    for where, folder in (("argument root", root), ("FASTADAPT_DATA", os.environ.get("FASTADAPT_DATA"))):
        if folder is None or folder == "":
            continue
        folder = Path(folder).expanduser()
        if all(_subset_source(folder, s) for s in SUBSETS):
            return folder
        raise DatasetError(
            f"Omniglot not found in {folder} (from {where}): it needs images_background.zip and "
            "images_evaluation.zip, or their extracted folders. Point FASTADAPT_DATA at the folder that "
            "holds them, or unset it to download the official archives."
        )
    folder = cache_dir() / "omniglot"
    looked.append(str(folder))
    if all(_subset_source(folder, s) for s in SUBSETS):
        return folder
    if not download:
        raise DatasetError(
            f"Omniglot not found (looked in {', '.join(looked)}). Set FASTADAPT_DATA to a folder with "
            "images_background.zip and images_evaluation.zip, or call with download=True."
        )
    return download_omniglot(folder)


def _members(source: Path) -> list[tuple[str, str, str]]:
    """(alphabet, character, drawer file) triples of one subset, sorted, zip or folder alike."""
    if source.is_dir():
        names = [str(p.relative_to(source.parent)) for p in source.rglob("*.png")]
    else:
        try:
            with zipfile.ZipFile(source) as archive:
                names = [n for n in archive.namelist() if n.endswith(".png")]
        except zipfile.BadZipFile as err:
            raise DatasetError(
                f"{source} is not a readable zip archive ({err}); delete it and download it again."
            ) from err
    triples = []
    for name in names:
        parts = Path(name).parts
        if len(parts) < 4:
            continue
        triples.append(tuple(parts[-3:]))
    return sorted(triples)


def _to_28(png_bytes: bytes, size: int = 28) -> np.ndarray:
    """Decode one Omniglot PNG, antialias-resize it and invert it so strokes are bright."""
    image = Image.open(io.BytesIO(png_bytes)).convert("L").resize((size, size), Image.LANCZOS)
    return 255 - np.asarray(image, dtype=np.uint8)


def _read_subset(source: Path, size: int, bar) -> tuple[np.ndarray, list[str], list[str]]:
    """All images of one subset as (characters, 20, size, size) uint8 with their names; bar counts characters."""
    triples = _members(source)
    characters = sorted({(a, c) for a, c, _ in triples})
    by_character: dict[tuple[str, str], list[str]] = {k: [] for k in characters}
    for a, c, f in triples:
        by_character[(a, c)].append(f)
    bad = {f"{a}/{c}": len(files) for (a, c), files in by_character.items() if len(files) != N_DRAWERS}
    if bad or not characters:
        raise DatasetError(
            f"{source} is incomplete: expected {N_DRAWERS} drawings per character, found "
            f"{dict(list(bad.items())[:3]) or 'no characters'}; delete it and download it again."
        )
    out = np.empty((len(characters), N_DRAWERS, size, size), dtype=np.uint8)
    archive = None if source.is_dir() else zipfile.ZipFile(source)
    subset = source.stem
    try:
        for i, (a, c) in enumerate(characters):
            for j, f in enumerate(by_character[(a, c)]):
                rel = f"{subset}/{a}/{c}/{f}"
                data = (source.parent / rel).read_bytes() if archive is None else archive.read(rel)
                out[i, j] = _to_28(data, size)
            bar.update(1)
    except (zipfile.BadZipFile, OSError, KeyError) as err:
        raise DatasetError(f"Could not read {source} ({err}); delete it and download it again.") from err
    finally:
        if archive is not None:
            archive.close()
    return out, [a for a, _ in characters], [f"{a}/{c}" for a, c in characters]


def _sources(root: Path) -> dict[str, Path]:
    """{subset: its folder or zip under root}, or a DatasetError naming the missing one."""
    sources = {subset: _subset_source(Path(root), subset) for subset in SUBSETS}
    missing = [subset for subset, source in sources.items() if source is None]
    if missing:
        raise DatasetError(f"{' and '.join(missing)} not found in {root}.")
    return sources


def preprocess_omniglot(root: Path, size: int = 28) -> Omniglot:
    """Read both subsets under root into one Omniglot object (background first, then evaluation)."""
    from tqdm import tqdm

    sources = _sources(root)
    total = sum(len({(a, c) for a, c, _ in _members(source)}) for source in sources.values())  # 1,623 characters
    parts = []
    with tqdm(total=total, desc="Omniglot: resizing to 28x28", unit="character", leave=False) as bar:
        for subset, source in sources.items():
            parts.append((subset, *_read_subset(source, size, bar)))
    images = np.concatenate([p[1] for p in parts])
    background = torch.tensor([p[0] == "images_background" for p in parts for _ in p[2]])
    return Omniglot(
        images=torch.from_numpy(images),
        alphabets=[a for p in parts for a in p[2]],
        characters=[c for p in parts for c in p[3]],
        background=background,
    )


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when torch.save or os.replace failed


def source_key(root: Path) -> list[list]:
    """What the cache is keyed to: each subset's resolved path, with size and modification time for an
    archive, or a hash of its PNG file names for a folder."""
    key = []
    for source in _sources(root).values():
        source = source.resolve()
        if source.is_dir():
            names = "\n".join(sorted(str(p.relative_to(source)) for p in source.rglob("*.png")))
            key.append([str(source), hashlib.sha256(names.encode()).hexdigest()])
        else:
            key.append([str(source), source.stat().st_size, source.stat().st_mtime_ns])
    return key


def _damaged(err: Exception) -> bool:
    """True for the errors of a truncated, emptied or overwritten file (not a permission error or a full disk)."""
    stream = isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err)  # torch's zip container is broken
    cut = isinstance(err, OSError) and err.errno == errno.EINVAL  # torch's file reader seeking past a truncated end
    return stream or cut or isinstance(err, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile))


def _read_cache(cache: Path, key: list) -> Omniglot | None:
    """The cached Omniglot if the file holds this version built from this source; None if missing, stale or damaged."""
    if not cache.exists():
        return None
    try:
        blob = torch.load(cache, weights_only=True)
    except Exception as err:
        if _damaged(err):
            return None  # rebuilt by the caller
        raise DatasetError(f"Cannot read the Omniglot cache {cache} ({err}); fix its permissions, or set "
                           "FASTADAPT_CACHE to a folder you can read and write.") from err
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION or blob.get("source") != key:
        return None
    return Omniglot(blob["images"], blob["alphabets"], blob["characters"], blob["background"])


def load_omniglot(root: str | Path | None = None, cache: str | Path | None = None, download: bool = True) -> Omniglot:
    """Omniglot as a tensor: from the cache file when it was built from the same archives, else preprocessed
    (about 15 s) and cached."""
    cache = Path(cache) if cache is not None else cache_file()
    source = find_omniglot(root, download=download)
    key = source_key(source)
    data = _read_cache(cache, key)
    if data is None:
        data = preprocess_omniglot(source)
        try:
            save_atomic({"version": CACHE_VERSION, "source": key, **data.__dict__}, cache)
        except OSError as err:
            raise DatasetError(f"Cannot write the Omniglot cache {cache} ({err}); free some disk space (it needs "
                               "about 26 MB) or set FASTADAPT_CACHE to a writable folder.") from err
    return data


def _split_file(split: str, part: str) -> list[str]:
    """The character names (Alphabet/characterNN) of one part of a split shipped with the package."""
    return (resources.files("fastadapt") / "splits" / f"{split}_{part}.txt").read_text().split()


def split_characters(data: Omniglot, split: str = "vinyals") -> dict[str, torch.Tensor]:
    """Class-disjoint character indices {"train", "val", "trainval", "test"} for the "vinyals" or "lake" split.

    vinyals: the published lists (Vinyals et al. 2016, as released with Prototypical Networks): 1,028
    train and 172 val characters (trainval: the 1,200 together) and 423 test characters, in the lists'
    order. lake: Lake et al.'s one-shot split. images_background (30 alphabets, 964 characters) is
    trainval, its last 5 alphabets (sorted by name) held out as val; the 20 alphabets of
    images_evaluation (659 characters) are the test set.
    """
    one_of("split", split, ("vinyals", "lake"))
    if split == "vinyals":
        index = {name: i for i, name in enumerate(data.characters)}
        names = {part: _split_file("vinyals", part) for part in ("train", "val", "test")}
        missing = [n for part in names.values() for n in part if n not in index]
        if missing:
            raise DatasetError(f"This Omniglot copy lacks {len(missing)} characters of the vinyals split (e.g. "
                               f"{missing[0]}); it needs the complete images_background and images_evaluation.")
        parts = {part: torch.tensor([index[n] for n in part_names]) for part, part_names in names.items()}
        return {**parts, "trainval": torch.cat([parts["train"], parts["val"]])}
    background = data.background.nonzero().squeeze(1)
    alphabets = sorted({data.alphabets[i] for i in background.tolist()})
    val_alphabets = set(alphabets[-5:])
    is_val = torch.tensor([data.alphabets[i] in val_alphabets for i in background.tolist()])
    return {
        "train": background[~is_val],
        "val": background[is_val],
        "trainval": background,
        "test": (~data.background).nonzero().squeeze(1),
    }


def omniglot_classes(
    split: str = "vinyals",
    part: str = "train",
    rotations: bool | None = None,
    data: Omniglot | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Images of one split part as (classes, 20, 1, 28, 28) uint8. With rotations (the default for the
    vinyals split) each character becomes 4 classes in a row: 0, 90, 180, 270 degrees counter-clockwise,
    the order of omniglot_class_names and of the published split files."""
    one_of("part", part, PARTS)
    data = load_omniglot() if data is None else data
    images = data.images[split_characters(data, split)[part]].unsqueeze(2)  # (characters, 20, 1, 28, 28)
    if rotations if rotations is not None else split == "vinyals":
        turns = [images.rot90(k, dims=(-2, -1)) for k in range(4)]
        images = torch.stack(turns, 1).flatten(0, 1)  # (characters * 4, 20, 1, 28, 28), a character's turns in a row
    return images.to(device)


def omniglot_class_names(split: str = "vinyals", part: str = "train", rotations: bool | None = None,
                         data: Omniglot | None = None) -> list[str]:
    """Names of the classes of omniglot_classes, in its order: Alphabet/characterNN, plus /rotDDD with rotations."""
    one_of("part", part, PARTS)
    data = load_omniglot() if data is None else data
    names = [data.characters[i] for i in split_characters(data, split)[part].tolist()]
    if rotations if rotations is not None else split == "vinyals":
        return [f"{name}/{turn}" for name in names for turn in ROTATIONS]
    return names


def timed_load(**kwargs) -> tuple[Omniglot, float]:
    """load_omniglot plus the seconds it took (for benchmarks and the book)."""
    start = time.perf_counter()
    data = load_omniglot(**kwargs)
    return data, time.perf_counter() - start
