"""Run by test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` on CPU.

Every process builds the same model and the same global batch of 2B pairs, keeps its own B, and
computes the loss with global negatives through the DDP-wrapped model; rank 0 also computes the
one-process loss and gradient of all 2B pairs, and writes both to a JSON file for the test to compare.
"""

import json
import sys

import torch
from accelerate import Accelerator

from modeling_ccr import ScanConfig, ScanModel


def global_batch(config, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n_regions, n_tokens = 6, 7
    features = torch.randn(size, n_regions, config.feature_dim, generator=generator)
    region_mask = torch.ones(size, n_regions, dtype=torch.bool)
    region_mask[::3, 4:] = False
    input_ids = torch.randint(4, config.vocab_size, (size, n_tokens), generator=generator)
    attention_mask = torch.ones(size, n_tokens, dtype=torch.long)
    attention_mask[1::2, 5:] = 0
    attention_mask[size // 2 :, 5:] = 0  # the second half's captions are short: see main()
    return features, region_mask, input_ids, attention_mask


def main(output_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.manual_seed(0)
    config = ScanConfig(feature_dim=10, embed_dim=8, vocab_size=40, word_dim=6, direction="t2i")
    reference = ScanModel(config)
    model = accelerator.prepare(ScanModel(config))
    accelerator.unwrap_model(model).load_state_dict(reference.state_dict())

    per_process = 4
    batch = global_batch(config, per_process * world)
    # Rank 1 drops its all-padding columns, so the processes' token lengths differ when gathered.
    # Pairs 0 and 5 (on different processes) show the same image: never each other's negatives.
    batch = (*batch, torch.tensor([0, 1, 2, 3, 4, 0, 6, 7])[: per_process * world])
    local = [tensor[rank * per_process : (rank + 1) * per_process] for tensor in batch]
    if rank == 1:
        local[2], local[3] = local[2][:, :5], local[3][:, :5]
    output = model(*local[:4], return_loss=True, gather_negatives=True, image_index=local[4])
    (output.loss * world).backward()
    local_loss = output.loss.detach()
    total_loss = accelerator.reduce(local_loss, reduction="sum")
    with torch.no_grad():
        per_process_only = accelerator.reduce(
            model(*local[:4], return_loss=True, image_index=local[4]).loss, reduction="sum"
        )
    grads = {n: p.grad.clone() for n, p in accelerator.unwrap_model(model).named_parameters()}
    with torch.no_grad():  # this process's (batch, batch) scores: a block of the global matrix
        block = slice(rank * per_process, (rank + 1) * per_process)
        expected_logits = reference(*batch[:4]).logits_per_image[block, block]
        logits_error = (output.logits_per_image.detach() - expected_logits).abs().max()
    max_logits_error = accelerator.reduce(logits_error, reduction="max")

    if accelerator.is_main_process:
        single = reference(*batch[:4], return_loss=True, image_index=batch[4])
        single.loss.backward()
        max_grad_error = max(float((grads[n] - p.grad).abs().max()) for n, p in reference.named_parameters())
        with open(output_path, "w") as f:
            json.dump(
                {
                    "world_size": world,
                    "ddp_loss": float(total_loss),
                    "max_local_logits_error": float(max_logits_error),
                    "per_process_negatives_loss": float(per_process_only),
                    "single_loss": float(single.loss.detach()),
                    "max_grad_error": max_grad_error,
                    "max_grad": max(float(p.grad.abs().max()) for p in reference.parameters()),
                },
                f,
            )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
