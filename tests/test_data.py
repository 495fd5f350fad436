"""Omniglot loading, preprocessing, caching, splits and downloads, checked against references.

Real-data tests use the session fixture `omniglot` (the cached 28x28 tensor). Preprocessing,
caching and error paths run on a tiny generated archive with the official layout, so they
take milliseconds instead of the minute a full preprocessing pass costs.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt import data as D
from fastadapt.data import (
    DatasetError,
    download_omniglot,
    find_omniglot,
    load_omniglot,
    md5sum,
    omniglot_class_names,
    omniglot_classes,
    preprocess_omniglot,
    split_characters,
)

SUBSETS = ("images_background", "images_evaluation")


def _shared_data() -> Path:
    """The local Omniglot copy named by FASTADAPT_DATA (tests that need the archives skip without it)."""
    folder = os.environ.get("FASTADAPT_DATA")
    if not folder or not all((Path(folder) / f"{s}.zip").is_file() for s in SUBSETS):
        pytest.skip("FASTADAPT_DATA does not point at the two Omniglot zips")
    return Path(folder)


# --------------------------------------------------------------------------------------------
# A tiny Omniglot with the official layout: images_<subset>/<Alphabet>/characterNN/XXXX_YY.png
# --------------------------------------------------------------------------------------------

# Evaluation alphabets sort *before* the background ones, so a global sort would be caught.
TINY_ALPHABETS = {"images_background": ("Yankee", "Zulu"), "images_evaluation": ("Alpha", "Bravo")}
TINY_CHARS_PER_ALPHABET = 2
TINY_CHARACTERS = [  # the order load_omniglot must produce: background first, then sorted paths
    f"{a}/character{c:02d}"
    for s in SUBSETS
    for a in TINY_ALPHABETS[s]
    for c in range(1, TINY_CHARS_PER_ALPHABET + 1)
]
N_TINY = len(TINY_CHARACTERS)  # 8


def _glyph(g: int, d: int) -> Image.Image:
    """105x105 one-bit drawing of character g by drawer d: a black 30x30 square on white, placed by (g, d)."""
    image = Image.new("1", (105, 105), 1)
    x0, y0 = 4 + 8 * g, 4 + 3 * d
    image.paste(0, (x0, y0, x0 + 30, y0 + 30))
    return image


def _reference_28(image: Image.Image) -> np.ndarray:
    """An independent 28x28 reference: box-filter downsampling, inverted so strokes are bright."""
    return 255 - np.asarray(image.convert("L").resize((28, 28), Image.BOX), dtype=np.float64)


def _tiny_files(drop: tuple[str, int] | None = None) -> dict[str, bytes]:
    """{relative path: PNG bytes} of the tiny Omniglot; drop=(character, drawer) leaves one drawing out."""
    files = {}
    g = 0
    for subset in SUBSETS:
        for alphabet in TINY_ALPHABETS[subset]:
            for c in range(1, TINY_CHARS_PER_ALPHABET + 1):
                for d in range(20):
                    if drop == (f"{alphabet}/character{c:02d}", d):
                        continue
                    buffer = io.BytesIO()
                    _glyph(g, d).save(buffer, format="PNG")
                    files[f"{subset}/{alphabet}/character{c:02d}/{g + 1:04d}_{d + 1:02d}.png"] = buffer.getvalue()
                g += 1
    return files


def _write_folders(root: Path, files: dict[str, bytes]) -> Path:
    """The extracted-folder variant of the tiny archive under root."""
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


def _write_zips(root: Path, files: dict[str, bytes]) -> Path:
    """The zip variant: root/images_background.zip and root/images_evaluation.zip (members in reverse order)."""
    root.mkdir(parents=True, exist_ok=True)
    for subset in SUBSETS:
        with zipfile.ZipFile(root / f"{subset}.zip", "w") as archive:
            for rel in sorted(files, reverse=True):  # unsorted members: the reader must sort
                if rel.startswith(subset + "/"):
                    archive.writestr(rel, files[rel])
    return root


@pytest.fixture(scope="module")
def tiny_files():
    return _tiny_files()


@pytest.fixture(scope="module")
def tiny_zip_root(tmp_path_factory, tiny_files):
    return _write_zips(tmp_path_factory.mktemp("tiny_zip"), tiny_files)


@pytest.fixture(scope="module")
def tiny_folder_root(tmp_path_factory, tiny_files):
    return _write_folders(tmp_path_factory.mktemp("tiny_folder"), tiny_files)


@pytest.fixture(scope="module")
def tiny(tiny_zip_root):
    return preprocess_omniglot(tiny_zip_root)


def _same(a: D.Omniglot, b: D.Omniglot) -> None:
    assert torch.equal(a.images, b.images)
    assert a.images.dtype == b.images.dtype == torch.uint8
    assert a.alphabets == b.alphabets
    assert a.characters == b.characters
    assert torch.equal(a.background, b.background)


# --------------------------------------------------------------------------------------------
# The real Omniglot: counts, polarity, order, pixels
# --------------------------------------------------------------------------------------------


def test_counts_and_dtype(omniglot):
    assert omniglot.images.shape == (1623, 20, 28, 28)
    assert omniglot.images.dtype == torch.uint8
    assert len(omniglot) == 1623
    assert int(omniglot.background.sum()) == 964
    assert int((~omniglot.background).sum()) == 659
    assert omniglot.background.dtype == torch.bool
    assert len(omniglot.alphabets) == len(omniglot.characters) == 1623
    assert len(set(omniglot.characters)) == 1623
    bg = {a for a, b in zip(omniglot.alphabets, omniglot.background.tolist()) if b}
    ev = {a for a, b in zip(omniglot.alphabets, omniglot.background.tolist()) if not b}
    assert len(bg) == 30 and len(ev) == 20 and not bg & ev


def test_background_comes_first(omniglot):
    assert omniglot.background[:964].all() and not omniglot.background[964:].any()


def test_pixel_polarity(omniglot):
    images = omniglot.images.float()
    assert images.mean() < 64  # strokes are thin and bright on a dark background
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    assert (border == 0).float().mean() > 0.9
    # every image has some ink, and the brightest pixel of an image is a stroke
    assert (omniglot.images.flatten(2).amax(-1) > 128).all()


@pytest.fixture(scope="module")
def real_archives():
    """The two real Omniglot zips, opened once, with their sorted PNG member names."""
    root = _shared_data()
    archives = {s: zipfile.ZipFile(root / f"{s}.zip") for s in SUBSETS}
    yield {s: (a, sorted(n for n in a.namelist() if n.endswith(".png"))) for s, a in archives.items()}
    for archive in archives.values():
        archive.close()


def test_character_order_matches_the_archives(omniglot, real_archives):
    """characters are the archives' Alphabet/characterNN folders, background first, each subset sorted."""
    expected = []
    for subset in SUBSETS:
        names = real_archives[subset][1]
        assert len(names) == (964 if subset == SUBSETS[0] else 659) * 20
        expected += sorted({"/".join(Path(n).parts[1:3]) for n in names})
    assert omniglot.characters == expected
    assert omniglot.alphabets == [c.split("/")[0] for c in expected]


@pytest.mark.parametrize("character, drawer", [(0, 0), (500, 7), (963, 19), (964, 0), (1622, 19)])
def test_cached_pixels_match_the_archive(omniglot, real_archives, character, drawer):
    """A few cached images against an independent decode (box filter) of the original 105x105 PNG."""
    subset = SUBSETS[0] if omniglot.background[character] else SUBSETS[1]
    archive, names = real_archives[subset]
    prefix = f"{subset}/{omniglot.characters[character]}/"
    name = [n for n in names if n.startswith(prefix)][drawer]
    assert name.endswith(f"_{drawer + 1:02d}.png")
    image = Image.open(io.BytesIO(archive.read(name)))
    assert image.size == (105, 105) and image.mode == "1"
    reference = _reference_28(image)
    ours = omniglot.images[character, drawer].double().numpy()
    assert np.abs(ours - reference).mean() < 12
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.9
    # and it is not just any Omniglot image: the neighbouring drawer is clearly further away
    other = omniglot.images[character, (drawer + 1) % 20].double().numpy()
    assert np.abs(other - reference).mean() > np.abs(ours - reference).mean()


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


PUBLISHED = {"train": (1028, 33), "val": (172, 5), "trainval": (1200, 38), "test": (423, 13)}  # characters, alphabets


def _published_lines(part: str) -> list[str]:
    """Lines (Alphabet/characterNN/rotDDD) of the published split file, read from the shared data folder."""
    folder = Path(os.environ.get("FASTADAPT_DATA") or ".") / "splits" / "vinyals"
    if not (folder / f"{part}.txt").is_file():
        pytest.skip(f"the published split files are not in {folder.resolve()}: they come with the shared Omniglot "
                    "folder that FASTADAPT_DATA names (from jakesnell/prototypical-networks, data/omniglot/splits)")
    return (folder / f"{part}.txt").read_text().splitlines()


@pytest.mark.parametrize("part", list(PUBLISHED))
def test_vinyals_classes_are_the_published_files(omniglot, part):
    """The package's classes (character x rotation, in order) are the lines of the published file, and class i
    holds that character's images turned by that many quarter turns (numpy's rot90 as the reference)."""
    lines = _published_lines(part)
    assert omniglot_class_names("vinyals", part, data=omniglot) == lines
    classes = omniglot_classes("vinyals", part, data=omniglot)  # (classes, 20, 1, 28, 28)
    assert classes.shape == (len(lines), 20, 1, 28, 28) and classes.dtype == torch.uint8
    index = {name: i for i, name in enumerate(omniglot.characters)}
    for i in range(0, len(lines), 97):  # a sample of classes, every rotation among them
        character, turn = lines[i].rsplit("/", 1)
        quarter_turns = {"rot000": 0, "rot090": 1, "rot180": 2, "rot270": 3}[turn]
        expected = np.rot90(omniglot.images[index[character]].numpy(), quarter_turns, axes=(-2, -1))
        np.testing.assert_array_equal(classes[i, :, 0].numpy(), expected)


def test_vinyals_split_sizes_and_disjointness(omniglot):
    split = split_characters(omniglot, "vinyals")
    for part, (characters, alphabets) in PUBLISHED.items():
        assert len(split[part]) == len(set(split[part].tolist())) == characters, part
        assert len({omniglot.alphabets[i] for i in split[part].tolist()}) == alphabets, part
    train, val, test = (set(split[k].tolist()) for k in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert split["trainval"].tolist() == split["train"].tolist() + split["val"].tolist()
    assert train | val | test == set(range(1623))


def test_shipped_vinyals_lists_hold_every_character_once():
    """The lists inside the package: one Alphabet/characterNN a line, no character twice, nothing else."""
    from importlib import resources

    names = {part: (resources.files("fastadapt") / "splits" / f"vinyals_{part}.txt").read_text().splitlines()
             for part in ("train", "val", "test")}
    every = [n for part in names.values() for n in part]
    assert len(every) == len(set(every)) == 1623
    assert all(re.fullmatch(r"[^/\s]+/character\d\d", n) for n in every)


def test_vinyals_split_needs_the_whole_dataset(tiny):
    with pytest.raises(DatasetError, match=r"lacks 1623 characters of the vinyals split .*complete images_background"):
        split_characters(tiny, "vinyals")


def test_lake_split(omniglot):
    split = split_characters(omniglot, "lake")
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 813, "val": 151, "trainval": 964, "test": 659}
    train, val, test = (set(split[k].tolist()) for k in ("train", "val", "test"))
    assert set(split["trainval"].tolist()) == train | val
    background = set(omniglot.background.nonzero().squeeze(1).tolist())
    assert len(background) == 964
    assert train | val == background and not train & val
    assert test == set(range(1623)) - background
    train_alphabets = {omniglot.alphabets[i] for i in train}
    val_alphabets = {omniglot.alphabets[i] for i in val}
    assert len(train_alphabets) == 25 and len(val_alphabets) == 5
    assert not train_alphabets & val_alphabets
    # every character of a validation alphabet is in val (whole alphabets are held out)
    assert val == {i for i in background if omniglot.alphabets[i] in val_alphabets}


def test_unknown_split_names_the_choices(omniglot):
    with pytest.raises(ValueError, match="vinyals.*lake"):
        split_characters(omniglot, "random")
    with pytest.raises(ValueError, match="vinyals.*lake"):
        omniglot_classes("Vinyals", "train", data=omniglot)
    with pytest.raises(ValueError, match="Unknown part 'training'; choose one of train, val, trainval, test"):
        omniglot_classes("vinyals", "training", data=omniglot)


@pytest.mark.parametrize(
    "split, part, rotations, n",
    [
        ("vinyals", "train", None, 4112),
        ("vinyals", "val", None, 688),
        ("vinyals", "test", None, 1692),
        ("vinyals", "train", False, 1028),
        ("lake", "train", None, 813),
        ("lake", "val", None, 151),
        ("lake", "trainval", None, 964),
        ("lake", "test", None, 659),
        ("lake", "train", True, 3252),
    ],
)
def test_omniglot_classes_sizes_and_rotations(omniglot, split, part, rotations, n):
    """Without rotations class c is character c of the part; with them classes 4c..4c+3 are its quarter turns."""
    classes = omniglot_classes(split, part, rotations=rotations, data=omniglot)
    assert classes.shape == (n, 20, 1, 28, 28)
    characters = split_characters(omniglot, split)[part]
    turns = n // len(characters)
    names = omniglot_class_names(split, part, rotations=rotations, data=omniglot)
    assert len(names) == n and names[::turns] == [
        omniglot.characters[i] + ("/rot000" if turns == 4 else "") for i in characters.tolist()]
    originals = omniglot.images[characters].numpy()  # (characters, 20, 28, 28)
    for k in range(turns):  # numpy's rot90 is the reference (counter-clockwise quarter turns)
        np.testing.assert_array_equal(classes[k::turns, :, 0].numpy(), np.rot90(originals, k, axes=(-2, -1)))


# --------------------------------------------------------------------------------------------
# Preprocessing on the tiny archive
# --------------------------------------------------------------------------------------------


def test_tiny_preprocess_shapes_and_metadata(tiny):
    assert tiny.images.shape == (N_TINY, 20, 28, 28) and tiny.images.dtype == torch.uint8
    assert tiny.characters == TINY_CHARACTERS
    assert tiny.alphabets == [c.split("/")[0] for c in TINY_CHARACTERS]
    assert tiny.background.tolist() == [True] * 4 + [False] * 4


def test_tiny_preprocess_inverts(tiny):
    """A black square on white becomes a bright square on black."""
    for g in range(N_TINY):
        for d in (0, 19):
            image = tiny.images[g, d].numpy()
            x0, y0 = 4 + 8 * g, 4 + 3 * d  # square in 105-pixel coordinates; its centre in 28-pixel ones:
            cx, cy = round((x0 + 15) * 28 / 105), round((y0 + 15) * 28 / 105)
            assert image[cy, cx] > 240
            assert image[0, 0] < 5 and image[27, 27] < 5
            assert 30 < (image > 128).sum() < 100  # about (30 * 28 / 105)^2 = 64 bright pixels


def test_tiny_preprocess_order(tiny):
    """Image (g, d) is drawing d of character g: it is nearest to its own reference among all 160."""
    references = np.stack([_reference_28(_glyph(g, d)) for g in range(N_TINY) for d in range(20)])
    ours = tiny.images.reshape(N_TINY * 20, 28 * 28).double().numpy()
    references = references.reshape(len(references), -1)
    distances = (ours**2).sum(1)[:, None] - 2 * ours @ references.T + (references**2).sum(1)[None]
    np.testing.assert_array_equal(distances.argmin(1), np.arange(N_TINY * 20))


def test_zip_and_folder_give_identical_tensors(tiny, tiny_folder_root):
    _same(preprocess_omniglot(tiny_folder_root), tiny)


def test_omniglot_py_folder_layout(tmp_path, tiny_files, tiny):
    """torchvision extracts into omniglot-py/; that layout is found too."""
    _write_folders(tmp_path / "omniglot-py", tiny_files)
    assert find_omniglot(tmp_path, download=False) == tmp_path
    _same(preprocess_omniglot(tmp_path), tiny)


def test_find_omniglot_prefers_root_then_env(tmp_path, monkeypatch, tiny_zip_root):
    monkeypatch.setenv("FASTADAPT_DATA", str(tiny_zip_root))
    assert find_omniglot(download=False) == tiny_zip_root
    monkeypatch.setenv("FASTADAPT_DATA", str(tmp_path))  # an empty folder: the explicit root still wins
    assert find_omniglot(tiny_zip_root, download=False) == tiny_zip_root


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def _no_rebuild(monkeypatch) -> None:
    """Make preprocessing fail, so that a load that succeeds must have come from the cache."""
    def refuse(root, size=28):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(D, "preprocess_omniglot", refuse)


def test_cache_round_trip(tmp_path, tiny_zip_root, tiny, monkeypatch):
    cache = tmp_path / "cache" / "omniglot28.pt"
    built = load_omniglot(root=tiny_zip_root, cache=cache)
    _same(built, tiny)
    assert cache.is_file()
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no temporary files left
    _no_rebuild(monkeypatch)
    _same(load_omniglot(root=tiny_zip_root, cache=cache), built)  # the second load comes from the cache


def _other_tiny_files() -> dict[str, bytes]:
    """The tiny Omniglot with every drawing mirrored: the same names, other pixels."""
    files = {}
    for rel, blob in _tiny_files().items():
        buffer = io.BytesIO()
        Image.open(io.BytesIO(blob)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="PNG")
        files[rel] = buffer.getvalue()
    return files


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_cache_built_from_other_files_is_rebuilt(tmp_path, tiny_zip_root, tiny, layout, monkeypatch):
    """A cache belongs to the archives it was built from: other files (or a changed archive) rebuild it."""
    cache = tmp_path / "omniglot28.pt"
    load_omniglot(root=tiny_zip_root, cache=cache)
    other = (_write_zips if layout == "zip" else _write_folders)(tmp_path / "other", _other_tiny_files())
    mirrored = load_omniglot(root=other, cache=cache)
    _same(mirrored, preprocess_omniglot(other))
    assert not torch.equal(mirrored.images, tiny.images)
    if layout == "zip":  # the same path, rewritten with the original drawings: size or time changes the key
        _write_zips(other, _tiny_files())
        os.utime(other / "images_background.zip", ns=(1, 1))
        _same(load_omniglot(root=other, cache=cache), tiny)
    _no_rebuild(monkeypatch)
    with pytest.raises(AssertionError, match="rebuilt"):
        load_omniglot(root=tiny_zip_root, cache=cache)  # the cache now belongs to the other folder


def _damage_truncate(cache: Path, tiny: D.Omniglot, key) -> None:
    D.save_atomic({"version": D.CACHE_VERSION, "source": key, **tiny.__dict__}, cache)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])


def _damage_garbage(cache: Path, tiny: D.Omniglot, key) -> None:
    cache.write_bytes(np.random.default_rng(0).bytes(5000))


def _damage_empty(cache: Path, tiny: D.Omniglot, key) -> None:
    cache.write_bytes(b"")


def _damage_old_version(cache: Path, tiny: D.Omniglot, key) -> None:
    stale = D.Omniglot(tiny.images.flip(-1), tiny.alphabets, tiny.characters, tiny.background)
    torch.save({"version": D.CACHE_VERSION - 1, "source": key, **stale.__dict__}, cache)


def _damage_not_a_dict(cache: Path, tiny: D.Omniglot, key) -> None:
    torch.save(torch.zeros(3), cache)


@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_garbage, _damage_empty, _damage_old_version, _damage_not_a_dict]
)
def test_damaged_cache_is_rebuilt(tmp_path, tiny_zip_root, tiny, damage, monkeypatch):
    cache = tmp_path / "omniglot28.pt"
    damage(cache, tiny, D.source_key(tiny_zip_root))
    _same(load_omniglot(root=tiny_zip_root, cache=cache), tiny)
    _no_rebuild(monkeypatch)  # the rebuilt cache is good again
    _same(load_omniglot(root=tiny_zip_root, cache=cache), tiny)


def test_unreadable_cache_is_an_error_not_a_rebuild(tmp_path, tiny_zip_root, monkeypatch):
    """A permission problem is not damage: it is reported (with the fix), and the file is left alone."""
    cache = tmp_path / "omniglot28.pt"
    load_omniglot(root=tiny_zip_root, cache=cache)
    before = cache.read_bytes()

    def no_permission(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", no_permission)
    _no_rebuild(monkeypatch)
    with pytest.raises(DatasetError, match=r"Cannot read the Omniglot cache .*omniglot28\.pt \(.*Permission denied\); "
                                           r"fix its permissions, or set FASTADAPT_CACHE"):
        load_omniglot(root=tiny_zip_root, cache=cache)
    assert cache.read_bytes() == before


def test_full_disk_is_an_error_with_the_fix(tmp_path, tiny_zip_root, monkeypatch):
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    cache = tmp_path / "omniglot28.pt"
    with pytest.raises(DatasetError, match=r"Cannot write the Omniglot cache .*No space left on device\); free some "
                                           r"disk space .* or set FASTADAPT_CACHE to a writable folder"):
        load_omniglot(root=tiny_zip_root, cache=cache)
    assert list(tmp_path.iterdir()) == []


def test_preprocessing_progress_counts_characters(tiny_zip_root, monkeypatch):
    """The progress bar of a first load counts the 1,623 characters (8 here), not the two archives."""
    import tqdm

    bars = []

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            bars.append({"total": kwargs.get("total"), "done": 0})

        def update(self, n=1):
            bars[-1]["done"] += n

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    preprocess_omniglot(tiny_zip_root)
    assert bars == [{"total": N_TINY, "done": N_TINY}]


def test_default_cache_location_follows_env(tmp_path, monkeypatch, tiny_zip_root, tiny):
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("FASTADAPT_DATA", str(tiny_zip_root))
    _same(load_omniglot(), tiny)
    assert (tmp_path / "c" / f"omniglot28_v{D.CACHE_VERSION}.pt").is_file()


# --------------------------------------------------------------------------------------------
# Bad input: each with a message that says what is wrong and what to do
# --------------------------------------------------------------------------------------------


def test_env_pointing_at_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTADAPT_DATA", str(tmp_path))
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    pattern = rf"{re.escape(str(tmp_path))}.*FASTADAPT_DATA"
    with pytest.raises(DatasetError, match=pattern):
        find_omniglot()
    with pytest.raises(DatasetError, match=pattern):
        load_omniglot()
    assert not (tmp_path / "cache").exists()  # it neither cached nor downloaded anything


def test_env_pointing_at_half_a_dataset(tmp_path, monkeypatch, tiny_zip_root):
    shutil.copy(tiny_zip_root / "images_background.zip", tmp_path)
    monkeypatch.setenv("FASTADAPT_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match="images_evaluation"):
        find_omniglot()


def test_corrupt_zip(tmp_path, monkeypatch, tiny_zip_root):
    (tmp_path / "images_background.zip").write_bytes(np.random.default_rng(1).bytes(10_000))
    shutil.copy(tiny_zip_root / "images_evaluation.zip", tmp_path)
    with pytest.raises(DatasetError, match=r"images_background\.zip is not a readable zip"):
        preprocess_omniglot(tmp_path)
    monkeypatch.setenv("FASTADAPT_DATA", str(tmp_path))
    cache = tmp_path / "cache.pt"
    with pytest.raises(DatasetError, match="not a readable zip"):
        load_omniglot(cache=cache)
    assert not cache.exists()


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_incomplete_character(tmp_path, layout):
    files = _tiny_files(drop=("Zulu/character02", 5))
    root = (_write_zips if layout == "zip" else _write_folders)(tmp_path, files)
    with pytest.raises(DatasetError, match=r"incomplete.*20 drawings.*Zulu/character02': 19"):
        preprocess_omniglot(root)


def test_no_data_and_no_download(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTADAPT_DATA", raising=False)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path))
    with pytest.raises(DatasetError, match="not found.*FASTADAPT_DATA.*download=True"):
        find_omniglot(download=False)
    with pytest.raises(DatasetError, match="not found"):
        load_omniglot(download=False)
    assert not (tmp_path / "omniglot").exists()


def test_empty_env_var_is_ignored(tmp_path, monkeypatch, tiny_files):
    """FASTADAPT_DATA='' means unset: the cache folder is used."""
    _write_zips(tmp_path / "omniglot", tiny_files)
    monkeypatch.setenv("FASTADAPT_DATA", "")
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path))
    assert find_omniglot(download=False) == tmp_path / "omniglot"


# --------------------------------------------------------------------------------------------
# Downloads, from the local copy through file:// URLs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_md5():
    root = _shared_data()
    return {s: md5sum(root / f"{s}.zip") for s in SUBSETS}


@pytest.fixture
def file_urls(monkeypatch):
    """Count the downloads that download_omniglot makes (file:// URLs of the local copy)."""
    calls = []
    fetch = D._fetch

    def counting_fetch(url, path):
        calls.append(url)
        fetch(url, path)

    monkeypatch.setattr(D, "_fetch", counting_fetch)
    return calls


def test_download_from_local_copy(tmp_path, local_md5, file_urls):
    source = _shared_data()
    dest = download_omniglot(tmp_path / "dl", base_url=source.as_uri(), md5=local_md5)
    assert dest == tmp_path / "dl"
    assert sorted(p.name for p in dest.iterdir()) == ["images_background.zip", "images_evaluation.zip"]
    for subset in SUBSETS:
        assert md5sum(dest / f"{subset}.zip") == local_md5[subset]
    assert len(file_urls) == 2
    assert find_omniglot(dest, download=False) == dest
    # A second call finds both archives verified and downloads nothing.
    download_omniglot(dest, base_url=source.as_uri(), md5=local_md5)
    assert len(file_urls) == 2


def test_download_wrong_md5_removes_the_file(tmp_path, local_md5, file_urls):
    source = _shared_data()
    wrong = {**local_md5, "images_background": "0" * 32}
    with pytest.raises(DatasetError, match=r"images_background\.zip.*MD5.*0{32}"):
        download_omniglot(tmp_path, base_url=source.as_uri(), md5=wrong)
    assert not (tmp_path / "images_background.zip").exists()


def test_download_unreachable_url(tmp_path, local_md5):
    missing = (tmp_path / "nowhere").as_uri()
    with pytest.raises(DatasetError, match=rf"Could not download {re.escape(missing)}/images_background\.zip.*FASTADAPT_DATA"):
        download_omniglot(tmp_path / "dl", base_url=missing, md5=local_md5)


def test_cache_download_path(tmp_path, monkeypatch, local_md5, file_urls):
    """find_omniglot with nothing configured downloads into $FASTADAPT_CACHE/omniglot."""
    source = _shared_data()
    monkeypatch.delenv("FASTADAPT_DATA", raising=False)
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path))
    monkeypatch.setattr(D, "OMNIGLOT_URL", source.as_uri())
    monkeypatch.setattr(D, "OMNIGLOT_MD5", local_md5)
    # download_omniglot's defaults were bound at definition time, so patch those too
    monkeypatch.setattr(D.download_omniglot, "__defaults__", (source.as_uri(), None))
    assert find_omniglot(download=True) == tmp_path / "omniglot"
    assert len(file_urls) == 2
    assert md5sum(tmp_path / "omniglot" / "images_evaluation.zip") == local_md5["images_evaluation"]


def test_download_replaces_a_stale_archive(tmp_path, local_md5, file_urls):
    source = _shared_data()
    (tmp_path / "images_evaluation.zip").write_bytes(b"half a download")
    download_omniglot(tmp_path, base_url=source.as_uri(), md5=local_md5)
    assert md5sum(tmp_path / "images_evaluation.zip") == local_md5["images_evaluation"]


def test_failed_download_leaves_no_partial_file(tmp_path, local_md5, monkeypatch):
    class Broken:
        """A response that delivers a few bytes, then drops the connection."""

        headers = {}
        sent = False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            if not self.sent:
                self.sent = True
                return b"first bytes"
            raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(D.urllib.request, "urlopen", lambda url, timeout=None: Broken())
    with pytest.raises(DatasetError, match="Could not download"):
        download_omniglot(tmp_path, base_url=_shared_data().as_uri(), md5=local_md5)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
