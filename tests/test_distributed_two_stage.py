"""Two-stage retrieval under torch.distributed: two CPU processes (gloo) shard both stages and gather the
single-process matrix."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from modeling_ccr import ScanConfig, ScanModel
from modeling_ccr.evaluation.two_stage import gather_shards, shard, two_stage_similarity

N_IMAGES, N_CAPTIONS = 5, 11  # not multiples of the world size: the last shards are shorter


def build():
    torch.manual_seed(0)
    model = ScanModel(ScanConfig(feature_dim=8, embed_dim=16, vocab_size=30, word_dim=4)).eval()
    generator = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(N_IMAGES, 6, 16, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(N_CAPTIONS, 5, 16, generator=generator), dim=-1)
    region_mask = torch.ones(N_IMAGES, 6, dtype=torch.bool)
    region_mask[1, 4:] = False
    word_mask = torch.arange(5)[None, :] < torch.randint(1, 6, (N_CAPTIONS, 1), generator=generator)
    return model, (images, region_mask, texts, word_mask)


def worker(rank: int, world: int, init_file: str, output: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, inputs = build()
        captions = shard(N_CAPTIONS)
        torch.save(
            ((captions.start, captions.stop), two_stage_similarity(model, *inputs, k=2)), f"{output}.{rank}"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and the package
def test_two_processes_shard_both_stages_and_gather_the_single_process_matrix(tmp_path):
    output = str(tmp_path / "scores")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), output), nprocs=2, join=True)
    model, inputs = build()
    expected = two_stage_similarity(model, *inputs, k=2)
    shards = []
    for rank in range(2):
        captions, gathered = torch.load(f"{output}.{rank}")
        shards.append(captions)
        torch.testing.assert_close(gathered, expected, rtol=0, atol=1e-6)
    assert shards == [(0, 6), (6, 11)]


def test_without_a_process_group_this_process_has_every_item():
    assert shard(7) == slice(0, 7)
    rows = torch.arange(7)
    assert gather_shards(rows, 7) is rows
