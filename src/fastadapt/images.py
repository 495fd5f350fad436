"""Read a reader's own images the way Omniglot is prepared: grayscale, 28x28, bright strokes on dark."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image(path: str | Path, size: int = 28) -> torch.Tensor:
    """One image file -> (1, size, size) float in [0, 1], inverted if its background is light."""
    try:
        with Image.open(path) as image:
            gray = image.convert("L").resize((size, size), Image.LANCZOS)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"Cannot read image {path}: {err}. Use PNG, JPEG or another format Pillow reads.") from err
    pixels = np.asarray(gray, dtype=np.float32) / 255  # (size, size)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 0.5:  # light background, dark strokes: invert to Omniglot's polarity
        pixels = 1 - pixels
    return torch.from_numpy(pixels).unsqueeze(0)  # (1, size, size)


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside a folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_support_folder(folder: str | Path, size: int = 28) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """support/<class>/<image> -> x_support (n, 1, size, size), y_support (n,), class names (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Support folder {folder} does not exist; make one sub-folder of images per class.")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"Support folder {folder} has {len(classes)} class sub-folders; it needs at least 2.")
    images, labels = [], []
    for label, class_dir in enumerate(classes):
        files = image_files(class_dir)
        if not files:
            raise ValueError(f"Class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        images += [load_image(f, size) for f in files]
        labels += [label] * len(files)
    return torch.stack(images), torch.tensor(labels), [c.name for c in classes]


def load_query_folder(folder: str | Path, size: int = 28) -> tuple[torch.Tensor, list[Path]]:
    """query/<image> -> x_query (n, 1, size, size) and the files in the same order."""
    folder = Path(folder)
    files = image_files(folder) if folder.is_dir() else []
    if not files:
        raise ValueError(f"Query folder {folder} holds no images; put the images to classify directly in it.")
    return torch.stack([load_image(f, size) for f in files]), files
