"""Distributed gallery scoring: two real CPU processes (gloo) shard the images, gather the same matrix."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.evaluation.gallery import sharded_similarity

N_IMAGES = 5  # not a multiple of the world size: the last shard is shorter


def build():
    torch.manual_seed(0)
    model = ScanModel(ScanConfig(feature_dim=8, embed_dim=16, vocab_size=30, word_dim=4)).eval()
    generator = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(N_IMAGES, 6, 16, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(7, 5, 16, generator=generator), dim=-1)
    region_mask = torch.ones(N_IMAGES, 6, dtype=torch.bool)
    region_mask[1, 4:] = False
    word_mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 3, 5, 4, 1, 3])[:, None]
    return model, (images, region_mask, texts, word_mask)


def worker(rank: int, world: int, init_file: str, output: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, inputs = build()
        torch.save(sharded_similarity(model, *inputs), f"{output}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and the package
def test_two_processes_gather_the_single_process_similarity_matrix(tmp_path):
    output = str(tmp_path / "scores")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), output), nprocs=2, join=True)
    model, inputs = build()
    expected = model.similarity(*inputs)
    for rank in range(2):
        gathered = torch.load(f"{output}.{rank}")
        assert gathered.shape == (N_IMAGES, 7)
        torch.testing.assert_close(gathered, expected, rtol=0, atol=1e-6)


def test_without_a_process_group_the_whole_gallery_is_scored_here():
    model, inputs = build()
    torch.testing.assert_close(sharded_similarity(model, *inputs), model.similarity(*inputs))
