"""`model.similarity(..., compile=True)`: the compiled `score_pairs` (SGR, SAF) and the compiled tile kernel
(SCAN, BFAN) give the eager scores within 1e-5, over ragged masks, several caption lengths and block shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.models.configuration_bfan import BfanConfig
from modeling_ccr.models.configuration_sgraf import SafConfig, SgrConfig
from modeling_ccr.models.cross_attention import compiled_tiles
from modeling_ccr.models.modeling_bfan import BfanModel
from modeling_ccr.models.modeling_sgraf import SafModel, SgrModel

N_REGIONS = 5
MODELS = {"sgr": (SgrConfig, SgrModel), "saf": (SafConfig, SafModel)}


def ragged_gallery(n_images=7, n_captions=11, dim=16, seed=0):
    """l2-normalised embeddings; padded regions (one in the middle of a row) and captions of 1..9 words."""
    generator = torch.Generator().manual_seed(seed)
    region_mask = torch.rand(n_images, N_REGIONS, generator=generator) > 0.3
    region_mask[:, 0] = True
    images = F.normalize(torch.randn(n_images, N_REGIONS, dim, generator=generator), dim=-1)
    lengths = torch.randint(1, 10, (n_captions,), generator=generator)
    word_mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    texts = F.normalize(torch.randn(n_captions, word_mask.shape[1], dim, generator=generator), dim=-1)
    return images * region_mask[..., None], region_mask, texts * word_mask[..., None], word_mask


@pytest.mark.slow  # one inductor compilation per model: tens of seconds on a CPU
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_gallery_scores_equal_the_eager_scores_within_1e_5(name):
    config_class, model_class = MODELS[name]
    torch.manual_seed(0)
    model = model_class(
        config_class(feature_dim=12, embed_dim=16, vocab_size=30, word_dim=6, sim_dim=8, n_regions=N_REGIONS)
    ).eval()
    inputs = ragged_gallery()
    # Small blocks: several image and caption block shapes, and several caption lengths, in one gallery.
    blocks = dict(image_block=3, caption_block=4)
    eager = model.similarity(*inputs, **blocks)
    counters.clear()
    compiled = model.similarity(*inputs, **blocks, compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled scorer really ran
    assert compiled.shape == eager.shape
    assert (compiled - eager).abs().max() <= 1e-5
    assert model.compiled_score_pairs() is model.compiled_score_pairs()  # built once per model


TILED = {
    "scan_t2i": lambda: ScanModel(ScanConfig(feature_dim=12, embed_dim=16, vocab_size=30, word_dim=6)),
    "scan_i2t_lse": lambda: ScanModel(
        ScanConfig(
            feature_dim=12, embed_dim=16, vocab_size=30, word_dim=6, direction="i2t", aggregation="lse"
        )
    ),
    "bfan_prob": lambda: BfanModel(
        BfanConfig(feature_dim=12, embed_dim=16, vocab_size=30, word_dim=6, focal="prob")
    ),
}


@pytest.mark.slow  # one inductor compilation of the tile kernel per rule: tens of seconds on a CPU
@pytest.mark.parametrize("name", sorted(TILED))
def test_compiled_tile_kernel_gives_the_eager_scores_within_1e_5(name):
    torch.manual_seed(0)
    model = TILED[name]().eval()
    inputs = ragged_gallery()
    blocks = dict(image_block=3, caption_block=4)
    eager = model.similarity(*inputs, **blocks)
    counters.clear()
    compiled = model.similarity(*inputs, **blocks, compile=True)
    assert counters["stats"]["calls_captured"] > 0  # the compiled tile kernel really ran
    assert (compiled - eager).abs().max() <= 1e-5


def test_training_scores_stay_eager_inside_compiled_tiles():
    # The compiled tile kernel is for gradient-free gallery scoring; training keeps the eager kernel.
    torch.manual_seed(0)
    model = TILED["scan_t2i"]()
    images, region_mask, texts, word_mask = ragged_gallery()
    counters.clear()
    with compiled_tiles():
        scores = model.score_pairs(images.requires_grad_(), region_mask, texts, word_mask)
    assert scores.requires_grad
    assert counters["stats"]["calls_captured"] == 0
