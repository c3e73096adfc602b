"""`model.similarity(..., compile=True)`: the blocks scored by `torch.compile`d `score_pairs` give the eager
scores within 1e-5, over ragged masks, several caption lengths and several block shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.models.configuration_sgraf import SafConfig, SgrConfig
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


def test_compile_leaves_the_tiled_scan_kernel_eager_with_identical_scores():
    # Tracing the tile loop would unroll one graph per tile; SCAN/BFAN tiles stay eager (docs/scoring.md).
    torch.manual_seed(0)
    model = ScanModel(ScanConfig(feature_dim=12, embed_dim=16, vocab_size=30, word_dim=6)).eval()
    inputs = ragged_gallery()
    eager = model.similarity(*inputs, image_block=3, caption_block=4)
    counters.clear()
    compiled = model.similarity(*inputs, image_block=3, caption_block=4, compile=True)
    assert counters["stats"]["calls_captured"] == 0  # no operation of the tile loop was traced
    assert torch.equal(compiled, eager)
