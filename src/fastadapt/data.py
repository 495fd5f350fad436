"""Omniglot: find or download the archives, preprocess once to 28x28, cache, and split."""
from __future__ import annotations

import hashlib
import io
import os
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
SUBSETS = ("images_background", "images_evaluation")
N_DRAWERS = 20
CACHE_VERSION = 1
VINYALS_SEED, VINYALS_TRAIN, VINYALS_VAL = 0, 1200, 100


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


def _read_subset(source: Path, size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """All images of one subset as (characters, 20, size, size) uint8 with their names."""
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
    except (zipfile.BadZipFile, OSError, KeyError) as err:
        raise DatasetError(f"Could not read {source} ({err}); delete it and download it again.") from err
    finally:
        if archive is not None:
            archive.close()
    return out, [a for a, _ in characters], [f"{a}/{c}" for a, c in characters]


def preprocess_omniglot(root: Path, size: int = 28) -> Omniglot:
    """Read both subsets under root into one Omniglot object (background first, then evaluation)."""
    from tqdm import tqdm

    parts = []
    for subset in tqdm(SUBSETS, desc="Omniglot: resizing to 28x28", leave=False):
        source = _subset_source(Path(root), subset)
        if source is None:
            raise DatasetError(f"{subset} not found in {root}.")
        parts.append((subset, *_read_subset(source, size)))
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


def load_omniglot(root: str | Path | None = None, cache: str | Path | None = None, download: bool = True) -> Omniglot:
    """Omniglot as a tensor: loaded from the cache file, or preprocessed once and cached."""
    cache = Path(cache) if cache is not None else cache_file()
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            if blob.get("version") == CACHE_VERSION:
                return Omniglot(blob["images"], blob["alphabets"], blob["characters"], blob["background"])
        except Exception:
            pass  # a damaged cache is rebuilt below
    data = preprocess_omniglot(find_omniglot(root, download=download))
    save_atomic({"version": CACHE_VERSION, **data.__dict__}, cache)
    return data


def split_characters(data: Omniglot, split: str = "vinyals") -> dict[str, torch.Tensor]:
    """Class-disjoint character indices {"train", "val", "test"} for the "vinyals" or "lake" split.

    vinyals: characters in canonical order (background then evaluation, sorted by path) are
    permuted with torch seed 0; the first 1,200 are meta-training, of which the last 100 are
    held out as validation (so train has 1,100), and the other 423 are the test set.
    lake: Lake et al.'s one-shot split. images_background (30 alphabets, 964 characters) is for
    meta-training, its last 5 alphabets (sorted by name) held out as validation; the 20 alphabets
    of images_evaluation (659 characters) are the test set.
    """
    n = len(data)
    if split == "vinyals":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VINYALS_SEED))
        train_val = order[:VINYALS_TRAIN]
        return {
            "train": train_val[: VINYALS_TRAIN - VINYALS_VAL].sort().values,
            "val": train_val[VINYALS_TRAIN - VINYALS_VAL :].sort().values,
            "test": order[VINYALS_TRAIN:].sort().values,
        }
    if split == "lake":
        background = data.background.nonzero().squeeze(1)
        alphabets = sorted({data.alphabets[i] for i in background.tolist()})
        val_alphabets = set(alphabets[-5:])
        is_val = torch.tensor([data.alphabets[i] in val_alphabets for i in background.tolist()])
        return {
            "train": background[~is_val],
            "val": background[is_val],
            "test": (~data.background).nonzero().squeeze(1),
        }
    raise ValueError(f"Unknown split {split!r}; choose 'vinyals' or 'lake'.")


def omniglot_classes(
    split: str = "vinyals",
    part: str = "train",
    rotations: bool | None = None,
    data: Omniglot | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Images of one split part as (classes, 20, 1, 28, 28) uint8; with rotations each character
    becomes 4 classes (0, 90, 180, 270 degrees), the default for the vinyals split."""
    if part not in ("train", "val", "test"):
        raise ValueError(f"Unknown part {part!r}; choose 'train', 'val' or 'test'.")
    data = load_omniglot() if data is None else data
    index = split_characters(data, split)[part]
    images = data.images[index].unsqueeze(2)  # (characters, 20, 1, 28, 28)
    if rotations if rotations is not None else split == "vinyals":
        images = torch.cat([images.rot90(k, dims=(-2, -1)) for k in range(4)])  # (4 * characters, 20, 1, 28, 28)
    return images.to(device)


def timed_load(**kwargs) -> tuple[Omniglot, float]:
    """load_omniglot plus the seconds it took (for benchmarks and the book)."""
    start = time.perf_counter()
    data = load_omniglot(**kwargs)
    return data, time.perf_counter() - start
