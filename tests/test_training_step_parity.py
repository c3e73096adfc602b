"""One training step of every registered backbone, ours against a float64 reference written by hand.

Ours: `MatchingTrainer`'s own optimizer (AdamW) and step learning-rate schedule, positioned at the decay
epoch, its `training_step` (the model's loss, backward) and the Trainer's gradient clipping and optimizer
step, in the order of its training loop. The reference reuses only the model's forward (for the scores)
on a float64 copy with the same weights and batch, and writes the hardest-negative hinge, the global-norm
clipping and the AdamW update itself.
"""

import copy
import math
import warnings

import pytest
import torch
from transformers import TrainingArguments

from modeling_ccr import BACKBONES
from modeling_ccr.models.configuration_ensemble import member_entry
from modeling_ccr.training.trainer import MatchingTrainer

TINY = dict(feature_dim=12, embed_dim=8, vocab_size=40, word_dim=6)
# Dropout off: the step is compared, not the random masks (SGRAF pools with dropout 0.4).
OPTIONS = {
    "sgr": dict(sim_dim=6, dropout=0.0),
    "saf": dict(sim_dim=6, dropout=0.0),
    "chan": dict(self_attention_heads=2),
}
ENSEMBLE_MEMBERS = (("scan", dict(direction="t2i")), ("scan", dict(direction="i2t", aggregation="lse")))
N_REGIONS, BATCH = 5, 4
LEARNING_RATE, DECAY_FACTOR, MAX_GRAD_NORM = 2e-3, 0.1, 0.05
BETAS, EPS = (0.9, 0.999), 1e-8


def member_config(name):
    config_class = BACKBONES[name][0]
    values = {**TINY, **OPTIONS.get(name, {})}
    if "n_regions" in config_class.__dataclass_fields__:
        values["n_regions"] = N_REGIONS
    return config_class(**values)


def build(name):
    config_class, model_class = BACKBONES[name]
    if name == "ensemble":
        config = config_class(
            members=[member_entry(member_config(m).__class__(**{**TINY, **o})) for m, o in ENSEMBLE_MEMBERS]
        )
    else:
        config = member_config(name)
    torch.manual_seed(0)
    return model_class(config).double()


def batch():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(BATCH, N_REGIONS, TINY["feature_dim"], generator=generator, dtype=torch.float64)
    region_mask = torch.ones(BATCH, N_REGIONS, dtype=torch.bool)
    region_mask[1, 3:] = False
    input_ids = torch.randint(3, TINY["vocab_size"], (BATCH, 6), generator=generator)
    attention_mask = torch.ones(BATCH, 6, dtype=torch.long)
    attention_mask[2, 3:] = 0
    return {
        "region_features": features * region_mask[..., None],
        "region_mask": region_mask,
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
    }


def hardest_negative_hinge(scores, margin):
    """sum_i max_j [margin + S(i, j) - S(i, i)]_+ + max_j [margin + S(j, i) - S(i, i)]_+ over j != i."""
    n = scores.shape[0]
    total = scores.new_zeros(())
    for i in range(n):
        negatives = [j for j in range(n) if j != i]
        total = total + max((margin + scores[i, j] - scores[i, i]).clamp_min(0) for j in negatives)
        total = total + max((margin + scores[j, i] - scores[i, i]).clamp_min(0) for j in negatives)
    return total


def infonce(scores, temperature):
    """sum_i -log softmax_j(S(i, j) / T)[i] over captions, plus the same over images (DAMSM's loss)."""
    n = scores.shape[0]
    total = scores.new_zeros(())
    for i in range(n):
        total = total - torch.log(
            torch.exp(scores[i, i] / temperature) / torch.exp(scores[i] / temperature).sum()
        )
        total = total - torch.log(
            torch.exp(scores[i, i] / temperature) / torch.exp(scores[:, i] / temperature).sum()
        )
    return total


def reference_loss(config, scores):
    if config.loss == "infonce":
        return infonce(scores, config.temperature)
    assert (config.loss, config.max_violation) == ("hinge", True), "add the reference of this loss"
    return hardest_negative_hinge(scores, config.margin)


def reference_step(model, inputs, lr):
    """The updated weights of one hand-written step: hinge, global-norm clipping, AdamW (first step)."""
    model = copy.deepcopy(model).train()
    members = model.members if hasattr(model, "members") else [model]
    embeds = model(**inputs)  # scores only: the loss is ours to write
    loss = 0.0
    images, texts = embeds.image_embeds, embeds.text_embeds
    splits = [m.config.embed_dim for m in members]
    for member, image, text in zip(members, images.split(splits, -1), texts.split(splits, -1), strict=True):
        scores = member.score_pairs(image, embeds.region_mask, text, embeds.word_mask)
        loss = loss + reference_loss(member.config, scores)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))
    assert norm > MAX_GRAD_NORM, "the batch must be one where clipping acts"
    scale = MAX_GRAD_NORM / (norm + 1e-6)
    updated = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            updated[name] = p.detach().clone()
            continue
        g = p.grad * scale
        m_hat = (1 - BETAS[0]) * g / (1 - BETAS[0])
        v_hat = (1 - BETAS[1]) * g * g / (1 - BETAS[1])
        updated[name] = p.detach() - lr * m_hat / (v_hat.sqrt() + EPS)  # weight decay 0: the run default
    return loss.detach(), updated


def our_step(model, inputs, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=LEARNING_RATE,
        max_grad_norm=MAX_GRAD_NORM,
        weight_decay=0.0,
        optim="adamw_torch",
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=EPS,
        per_device_train_batch_size=BATCH,
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
    )
    # Two steps per epoch, decay every epoch: the scheduler is moved to step 2, the first decayed one.
    trainer = MatchingTrainer(
        model=model,
        args=args,
        train_dataset=list(range(2 * BATCH)),
        lr_decay_epochs=1,
        lr_decay_factor=DECAY_FACTOR,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler stepped before any optimizer step, on purpose
        for _ in range(2):
            trainer.lr_scheduler.step()
    lr = trainer.optimizer.param_groups[0]["lr"]
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop for each step
    loss = trainer.training_step(model, inputs)
    trainer.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    trainer.optimizer.step()
    return loss, lr


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_one_step_equals_the_float64_reference_at_the_decay_epoch(name, tmp_path):
    model = build(name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = batch()
    expected_loss, expected = reference_step(model, inputs, LEARNING_RATE * DECAY_FACTOR)
    loss, lr = our_step(model, inputs, tmp_path)
    assert lr == pytest.approx(LEARNING_RATE * DECAY_FACTOR, rel=1e-12)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=0, atol=1e-5)
    for param_name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[param_name], rtol=0, atol=1e-5, msg=param_name)
    # The step moved the weights by about the learning rate, far more than the tolerance.
    moved = max(float((param.detach() - before[n]).abs().max()) for n, param in model.named_parameters())
    assert moved > 1e-4
