"""Read SCAN precomp folders (`f30k_precomp/`, `coco_precomp/`), one split at a time, in bounded memory.

Layout (SCAN and VSE++ releases), for each split `train`, `dev`, `test` and, for COCO, `testall` (the
5K test images, also scored as 5 folds of 1K):

- `{split}_ims.npy`: `(n_rows, n_regions, feature_dim)` region features (float32 in the releases, 36 x 2048
  bottom-up-attention regions). No boxes: the release dropped them (SCAN issue #8).
- `{split}_caps.txt`: one caption per line, `captions_per_image` (5) consecutive lines per image; caption
  `i` belongs to image `i // 5`. SCAN reads it as bytes and strips each line.
- `{split}_ids.txt` (some releases, e.g. COCO): one image id per line, in image order.

Two row layouts exist. Usually `n_rows == n_captions / 5` (one row per image). Some releases store one
feature row per caption (`n_rows == n_captions`), SCAN's `im_div` rule: rows `5i .. 5i+4` are image `i`.
The reader detects which from the counts, checks that the rows of one image are equal, and yields each
image once. An ids file may likewise list an id per image or per caption (then the 5 ids of an image must
agree).

Features are read through a memory map opened on a window of rows at a time and closed after it:
mapped pages count towards the process's resident memory while the map is open, so a map of the whole
36 GB COCO file would make the RSS grow with the file; a window keeps it bounded.
"""

from __future__ import annotations

import dataclasses
import tokenize
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..text_files import read_lines

PRECOMP_SPLITS: tuple[str, ...] = ("train", "dev", "test", "testall")
# Bytes of features read per window: large enough to amortise the reads, small against the 2 GB budget.
_WINDOW_BYTES = 64 * 2**20


class PrecompFormatError(UserError, ValueError):
    """A precomp file that cannot be used; the message names the file, and the line or row."""


@dataclasses.dataclass
class PrecompImage:
    """One image of a precomp split: `features` `(n_regions, feature_dim)` in the file's dtype, its
    captions, and `problem` (a message) when the image cannot be used as it is."""

    index: int
    image_id: str | None
    features: np.ndarray
    captions: list[str]
    problem: str | None = None


@dataclasses.dataclass
class PrecompSplit:
    """The files of one precomp split, checked against each other; features are not read yet.

    `rows_per_image` is 1 (one feature row per image) or `captions_per_image` (one row per caption).
    `image_ids` come from the ids file, or are None when the split has none.
    """

    name: str
    ims_path: Path
    caps_path: Path
    ids_path: Path | None
    n_images: int
    n_regions: int
    feature_dim: int
    dtype: np.dtype
    data_offset: int
    rows_per_image: int
    captions_per_image: int
    captions: list[str]
    image_ids: list[str] | None

    def read_rows(self, first_image: int, stop_image: int) -> np.ndarray:
        """`(stop - first, rows_per_image, n_regions, feature_dim)` features, read through a window map."""
        count = (stop_image - first_image) * self.rows_per_image
        row_bytes = self.n_regions * self.feature_dim * self.dtype.itemsize
        window = np.memmap(
            self.ims_path,
            dtype=self.dtype,
            mode="r",
            offset=self.data_offset + first_image * self.rows_per_image * row_bytes,
            shape=(count, self.n_regions, self.feature_dim),
        )
        rows = np.array(window)  # a private copy, so that the window can be unmapped now
        del window
        return rows.reshape(stop_image - first_image, self.rows_per_image, self.n_regions, self.feature_dim)

    def images(self, first_image: int = 0) -> Iterator[PrecompImage]:
        """Every image from `first_image` on, with its first feature row and its captions."""
        image_bytes = self.rows_per_image * self.n_regions * self.feature_dim * self.dtype.itemsize
        window_images = max(1, _WINDOW_BYTES // max(image_bytes, 1))
        cpi = self.captions_per_image
        for start in range(first_image, self.n_images, window_images):
            stop = min(start + window_images, self.n_images)
            rows = self.read_rows(start, stop)
            for offset in range(stop - start):
                index = start + offset
                captions = self.captions[index * cpi : (index + 1) * cpi]
                image = PrecompImage(
                    index,
                    None if self.image_ids is None else self.image_ids[index],
                    rows[offset, 0],
                    captions,
                )
                image.problem = self._problem(index, rows[offset], captions)
                yield image

    def _problem(self, index: int, rows: np.ndarray, captions: list[str]) -> str | None:
        """Why image `index` cannot be converted as it is, or None."""
        for number, caption in enumerate(captions):
            if not caption.strip():
                line = index * self.captions_per_image + number + 1
                return f"{self.caps_path}, line {line}: blank caption (caption {number} of image {index})"
        if self.rows_per_image > 1:
            for row in range(1, self.rows_per_image):
                if not np.array_equal(rows[row], rows[0]):
                    first = index * self.rows_per_image
                    return (
                        f"{self.ims_path}: rows {first}..{first + self.rows_per_image - 1} are image {index} "
                        f"(one row per caption), but row {first + row} differs from row {first}"
                    )
        finite = np.isfinite(rows[0])
        if not finite.all():
            region, dim = (int(i) for i in np.argwhere(~finite)[0])
            return (
                f"{self.ims_path}, row {index * self.rows_per_image}: non-finite feature "
                f"{rows[0][region, dim]} at region {region}, dim {dim} (image {index})"
            )
        return None


def _read_lines(path: Path, what: str) -> list[str]:
    """The lines of a captions or ids file (`data/text_files.py`: BOM dropped, LF / CR LF / CR endings, a
    last line without its newline refused as cut off), each stripped as SCAN strips them."""
    return [line.text.strip() for line in read_lines(path, error=PrecompFormatError, what=what)]


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a `.npy` file, without reading its data."""
    try:
        # A map of the file reads only its header; its pages are never touched here.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise PrecompFormatError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as error:  # EOFError: an empty or header-truncated file
        raise PrecompFormatError(f"{path}: not a readable .npy file ({error})") from None
    except tokenize.TokenError as error:  # numpy's fallback parse of a header cut inside its dict
        raise PrecompFormatError(
            f"{path}: not a readable .npy file (its header is cut off: {error})"
        ) from None
    except OverflowError:  # a header whose shape has more elements than any file can hold
        raise PrecompFormatError(
            f"{path}: not a readable .npy file (its header's shape is too large)"
        ) from None
    shape, dtype, offset = mapped.shape, mapped.dtype, mapped.offset
    fortran_order = mapped.flags.f_contiguous and not mapped.flags.c_contiguous
    del mapped  # unmaps the file
    if fortran_order:
        raise PrecompFormatError(f"{path}: Fortran-ordered array; expected C order (as np.save writes)")
    if len(shape) != 3 or dtype.kind != "f":
        raise PrecompFormatError(
            f"{path}: expected a float array (n_rows, n_regions, feature_dim), found {dtype} {shape}"
        )
    return shape, dtype, offset


def _image_ids(path: Path, n_images: int, captions_per_image: int) -> list[str]:
    ids = _read_lines(path, "ids file")
    if len(ids) == n_images * captions_per_image and captions_per_image > 1:
        for image in range(n_images):
            group = ids[image * captions_per_image : (image + 1) * captions_per_image]
            if len(set(group)) != 1:
                raise PrecompFormatError(
                    f"{path}, lines {image * captions_per_image + 1}..{(image + 1) * captions_per_image}: "
                    f"one id per caption, but the ids of image {image} differ: {group}"
                )
        ids = ids[::captions_per_image]
    if len(ids) != n_images:
        raise PrecompFormatError(
            f"{path}: {len(ids)} ids, expected one per image ({n_images}) or one per caption "
            f"({n_images * captions_per_image})"
        )
    for number, image_id in enumerate(ids, start=1):
        if not image_id:
            raise PrecompFormatError(f"{path}, line {number}: blank image id")
    return ids


def open_precomp_split(
    directory: str | Path, split: str, captions_per_image: int = 5, ids_path: str | Path | None = None
) -> PrecompSplit:
    """Check the files of `split` in a precomp folder against each other and detect the row layout.

    `ids_path` overrides `{split}_ids.txt` (read when present). Raises `PrecompFormatError` naming the
    files and counts when the captions do not fill whole images or the feature rows fit neither layout.
    """
    if (
        isinstance(captions_per_image, bool)
        or not isinstance(captions_per_image, int)
        or captions_per_image < 1
    ):
        raise PrecompFormatError(
            f"captions_per_image must be a positive integer, found {captions_per_image!r}"
        )
    directory = Path(directory)
    ims_path, caps_path = directory / f"{split}_ims.npy", directory / f"{split}_caps.txt"
    for path in (ims_path, caps_path):
        if not path.is_file():
            raise PrecompFormatError(f"{path}: file not found (precomp split {split!r})")
    (n_rows, n_regions, feature_dim), dtype, offset = _npy_header(ims_path)
    captions = _read_lines(caps_path, "captions file")
    if not captions or len(captions) % captions_per_image:
        raise PrecompFormatError(
            f"{caps_path}: {len(captions)} caption lines, expected a positive multiple of {captions_per_image} "
            f"({captions_per_image} consecutive captions per image)"
        )
    n_images = len(captions) // captions_per_image
    if n_rows == n_images:
        rows_per_image = 1
    elif n_rows == len(captions):
        rows_per_image = captions_per_image
    else:
        raise PrecompFormatError(
            f"{ims_path} has {n_rows} feature rows but {caps_path} has {len(captions)} captions: expected "
            f"{n_images} rows (one per image) or {len(captions)} (one per caption)"
        )
    if ids_path is None and (directory / f"{split}_ids.txt").is_file():
        ids_path = directory / f"{split}_ids.txt"
    ids_path = None if ids_path is None else Path(ids_path)
    image_ids = None if ids_path is None else _image_ids(ids_path, n_images, captions_per_image)
    if image_ids is not None and len(set(image_ids)) != n_images:
        repeated, times = Counter(image_ids).most_common(1)[0]
        raise PrecompFormatError(f"{ids_path}: image id {repeated!r} appears {times} times (once per image)")
    return PrecompSplit(
        name=split,
        ims_path=ims_path,
        caps_path=caps_path,
        ids_path=ids_path,
        n_images=n_images,
        n_regions=n_regions,
        feature_dim=feature_dim,
        dtype=dtype,
        data_offset=offset,
        rows_per_image=rows_per_image,
        captions_per_image=captions_per_image,
        captions=captions,
        image_ids=image_ids,
    )


def available_splits(directory: str | Path) -> list[str]:
    """The precomp splits whose `{split}_ims.npy` is in `directory`, in the canonical order."""
    return [split for split in PRECOMP_SPLITS if (Path(directory) / f"{split}_ims.npy").is_file()]
