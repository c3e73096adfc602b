"""The first stage's nearest-neighbour index over global embeddings (faiss, inner product).

Small galleries get an exact flat index (`IndexFlatIP`); large ones an inverted-file index (`IndexIVFFlat`)
whose parameters come from the gallery size: about sqrt(n) lists (the low end of faiss's guidance, which
keeps k-means training to about a minute for a million items on two CPU cores), trained for 10 k-means
iterations on a sample of at most 64 points per list, and 1/8 of the lists probed per query. An index is
built once, saved beside the gallery's first-stage embeddings (`save` / `load_or_build`) and reloaded when
the embeddings it was built from are unchanged. `shortlist_recall` measures an index's top-k against
brute force. faiss runs on the CPU; results come back on the queries' device.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .two_stage import shortlist

# Galleries up to this size get an exact flat index: one query scans them in about a millisecond.
FLAT_MAX_ITEMS = 100_000
# faiss wants at least this many training points per list (it warns below it).
MIN_POINTS_PER_LIST = 39
TRAIN_POINTS_PER_LIST = 64
KMEANS_ITERATIONS = 10
INDEX_FILE = "first_stage.faiss"
META_FILE = "first_stage_index.json"
EMBEDDINGS_FILE = "first_stage_embeddings.safetensors"


class GalleryIndexError(UserError, ValueError):
    """A first-stage index that cannot be built or loaded as asked."""


def import_faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency of the evaluate extra
        raise GalleryIndexError("the first-stage index needs faiss: pip install faiss-cpu") from err
    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


@dataclass(frozen=True)
class IndexParameters:
    """kind "flat" (exact) or "ivf"; n_lists and n_probe for "ivf" (0 for "flat")."""

    kind: str
    n_lists: int = 0
    n_probe: int = 0


def index_parameters(n_items: int, kind: str = "auto") -> IndexParameters:
    """Parameters for a gallery of `n_items`: flat up to `FLAT_MAX_ITEMS` items ("auto"), else IVF with
    about sqrt(n) lists (at most one per `MIN_POINTS_PER_LIST` items) probing 1/8 of them."""
    if kind not in ("auto", "flat", "ivf"):
        raise GalleryIndexError(f"index kind: expected 'auto', 'flat' or 'ivf', found {kind!r}")
    if kind == "flat" or (kind == "auto" and n_items <= FLAT_MAX_ITEMS):
        return IndexParameters("flat")
    n_lists = max(1, min(round(math.sqrt(n_items)), n_items // MIN_POINTS_PER_LIST))
    return IndexParameters("ivf", n_lists, max(1, min(n_lists, math.ceil(n_lists / 8))))


def fingerprint(embeddings: torch.Tensor) -> str:
    """A digest of the shape and of up to 1024 evenly spaced rows: tells whether saved embeddings changed."""
    rows = embeddings[:: max(1, embeddings.shape[0] // 1024)].float().contiguous().cpu().numpy()
    digest = hashlib.sha256(str(tuple(embeddings.shape)).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()


class GalleryIndex:
    """A faiss inner-product index over `(n_items, G)` l2-normalised embeddings."""

    def __init__(self, index, parameters: IndexParameters, n_items: int, dim: int, source: str):
        self.index, self.parameters, self.n_items, self.dim, self.source = (
            index,
            parameters,
            n_items,
            dim,
            source,
        )

    @classmethod
    def build(
        cls,
        embeddings: torch.Tensor,
        kind: str = "auto",
        n_lists: int | None = None,
        n_probe: int | None = None,
    ) -> GalleryIndex:
        """Index `embeddings` `(n_items, G)`; n_lists / n_probe override the size-based IVF parameters."""
        faiss = import_faiss()
        if embeddings.dim() != 2 or embeddings.shape[0] == 0:
            raise GalleryIndexError(
                f"index embeddings: expected a non-empty (n_items, dim) matrix, found shape {tuple(embeddings.shape)}"
            )
        n_items, dim = embeddings.shape
        parameters = index_parameters(n_items, kind)
        if parameters.kind == "ivf" and (n_lists or n_probe):
            lists = n_lists or parameters.n_lists
            parameters = IndexParameters("ivf", lists, min(lists, n_probe or parameters.n_probe))
        vectors = np.ascontiguousarray(embeddings.detach().float().cpu().numpy())
        if parameters.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, parameters.n_lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = KMEANS_ITERATIONS
            # A fixed sample (seeded) keeps the build reproducible and its time bounded.
            sample = np.random.default_rng(0).choice(
                n_items, min(n_items, TRAIN_POINTS_PER_LIST * parameters.n_lists), replace=False
            )
            index.train(vectors[np.sort(sample)])
            index.nprobe = parameters.n_probe
        index.add(vectors)
        return cls(index, parameters, n_items, dim, fingerprint(embeddings))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and indices `(n_queries, k)` of each query's k nearest items, best first; an IVF index
        that finds fewer than k items pads with index -1 and score -inf."""
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise GalleryIndexError(
                f"index queries: expected (n_queries, {self.dim}), found shape {tuple(queries.shape)}"
            )
        k = min(k, self.n_items)
        scores, indices = self.index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices)
        scores = scores.masked_fill(indices < 0, float("-inf"))
        return scores.to(queries.device), indices.to(queries.device)

    def search_indices(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Indices only (`two_stage.shortlisted_pairs`'s image_search)."""
        return self.search(queries, k)[1]

    def save(self, folder: str | Path) -> Path:
        """Write the index and its parameters into `folder`; returns the index file."""
        faiss = import_faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        meta = {**asdict(self.parameters), "n_items": self.n_items, "dim": self.dim, "source": self.source}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder / INDEX_FILE

    @classmethod
    def load(cls, folder: str | Path) -> GalleryIndex:
        """Read an index saved by `save`."""
        faiss = import_faiss()
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not (folder / INDEX_FILE).is_file() or not meta_path.is_file():
            raise GalleryIndexError(f"{folder}: no saved first-stage index ({INDEX_FILE} and {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            parameters = IndexParameters(meta["kind"], int(meta["n_lists"]), int(meta["n_probe"]))
            n_items, dim, source = int(meta["n_items"]), int(meta["dim"]), str(meta["source"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise GalleryIndexError(f"{meta_path}: not a first-stage index description ({err})") from err
        index = faiss.read_index(str(folder / INDEX_FILE))
        if index.ntotal != n_items or index.d != dim:
            raise GalleryIndexError(
                f"{folder / INDEX_FILE}: expected {n_items} items of dim {dim} ({META_FILE}), "
                f"found {index.ntotal} of dim {index.d}"
            )
        if parameters.kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = parameters.n_probe
        return cls(index, parameters, n_items, dim, source)

    @classmethod
    def load_or_build(cls, folder: str | Path, embeddings: torch.Tensor, kind: str = "auto") -> GalleryIndex:
        """The index saved in `folder` if it was built from these embeddings (same fingerprint, same kind
        unless "auto"), else a new one, saved there."""
        folder = Path(folder)
        if (folder / META_FILE).is_file():
            saved = cls.load(folder)
            if saved.source == fingerprint(embeddings) and kind in ("auto", saved.parameters.kind):
                return saved
        index = cls.build(embeddings, kind)
        index.save(folder)
        return index


def save_embeddings(folder: str | Path, images: torch.Tensor, captions: torch.Tensor) -> Path:
    """Save first-stage embeddings `(n_images, G)` and `(n_captions, G)` (safetensors) into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / EMBEDDINGS_FILE
    save_file(
        {
            "images": images.detach().float().contiguous().cpu(),
            "captions": captions.detach().float().contiguous().cpu(),
        },
        str(path),
    )
    return path


def load_embeddings(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-stage embeddings saved by `save_embeddings`: images `(n_images, G)`, captions `(n_captions, G)`."""
    from safetensors.torch import load_file

    path = Path(folder) / EMBEDDINGS_FILE
    if not path.is_file():
        raise GalleryIndexError(f"{path}: no saved first-stage embeddings")
    tensors = load_file(str(path))
    if set(tensors) != {"images", "captions"}:
        raise GalleryIndexError(f"{path}: expected tensors 'captions' and 'images', found {sorted(tensors)}")
    return tensors["images"], tensors["captions"]


def shortlist_recall(index: GalleryIndex, embeddings: torch.Tensor, queries: torch.Tensor, k: int) -> float:
    """Share of each query's brute-force top k `(n_queries, k)` that the index also returns, averaged.

    embeddings `(n_items, G)` as indexed, queries `(n_queries, G)`."""
    exact = shortlist(queries.float(), embeddings.float(), k).cpu()
    found = index.search_indices(queries, k).cpu()
    hits = (exact[:, :, None] == found[:, None, :]).any(dim=2).float()
    return float(hits.mean())
