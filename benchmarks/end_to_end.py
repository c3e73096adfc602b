"""Frozen region features against a vision tower fine-tuned with the matcher, at the same training budget.

On the digit scenes (a generated corpus: handwritten digits on a canvas, captions naming them, gold boxes),
trains SCAN t2i-AVG (256-d) twice for the same wall-clock seconds, both networks at the same input size:
- frozen: today's features (EfficientNet-Lite0 with its ImageNet weights, RoIAlign over the regions'
  boxes), computed once before training (their extraction time is reported, not counted);
- tower: the same network inside the model (`vision_tower`, "boxes" regions over the same boxes), trained
  end to end from the same ImageNet weights.
Reports test rSum, attention P / R / F1, the share of a digit word's attention on its own region (the
region that best overlaps the digit's gold box) against uniform (1 / n_regions), and the tower's images per
second forward + backward. Numbers are for this corpus and machine only.

    python benchmarks/end_to_end.py --budget 240 --out runs/end_to_end.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from modeling_ccr.data.collator import ImageCaptionCollator, RegionCaptionCollator
from modeling_ccr.data.image_corpus import ImagePairs, tower_feature_split
from modeling_ccr.data.pairs import ImageCaptionPairs
from modeling_ccr.evaluation.gallery import attention_metrics, evaluate_matchers, grounded_word_attentions
from modeling_ccr.metrics.attention import box_iou
from modeling_ccr.models import BACKBONES
from modeling_ccr.models.timm_weights import packaged_weights
from modeling_ccr.text.tokenization import build_word_tokenizer
from modeling_ccr.training.text_encoders import text_encoder_optimizer
from modeling_ccr.training.trainer import MatchingTrainer
from modeling_ccr.vision.digit_scenes import (
    DIGIT_PHRASE_TYPE,
    DigitScenesConfig,
    build_digit_scenes_corpus,
    build_digit_scenes_image_corpus,
)
from modeling_ccr.vision.extractor import RegionFeatureExtractor

MODEL = {"embed_dim": 256, "direction": "t2i", "aggregation": "avg", "lambda_softmax": 9.0}


class WallClockBudget(TrainerCallback):
    """Stop training once `seconds` of training time have passed (checked after every step)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = None
        self.steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step
        if time.time() - self.started >= self.seconds:
            control.should_training_stop = True


def own_region_share(model, tokenizer, split, max_pairs: int) -> dict[str, float]:
    """Mean attention of each digit phrase's digit word (its last word) on the region that best overlaps
    the digit's gold box, how often that region is the most attended, and the uniform share."""
    shares, argmax, uniform = [], 0, []
    for pair in grounded_word_attentions(model, tokenizer, split, max_pairs=max_pairs):
        for phrase in pair.phrases:
            word = phrase["first_word"] + phrase["num_words"] - 1
            if phrase["phrase_type"] != DIGIT_PHRASE_TYPE or word not in pair.phrase_words(phrase):
                continue
            own = int(
                box_iou(pair.boxes, torch.tensor(phrase["boxes"], dtype=torch.float32)).max(1).values.argmax()
            )
            row = pair.words[word]
            shares.append(float(row[own]))
            argmax += int(row.argmax()) == own
            uniform.append(1.0 / int(pair.region_mask.sum()))
    return {
        "digit_words": len(shares),
        "own_region_share": sum(shares) / len(shares),
        "own_region_is_argmax": argmax / len(shares),
        "uniform_share": sum(uniform) / len(uniform),
    }


def new_model(tokenizer, tower: dict | None, feature_dim: int):
    config_class, model_class = BACKBONES["scan"]
    options = {"vision_tower": tower} if tower else {"feature_dim": feature_dim}
    config = config_class(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **MODEL, **options,
    )  # fmt: skip
    model = model_class(config)
    model.load_vision_weights()
    return model


def train(model, tokenizer, train_pairs, collator, args: argparse.Namespace, out: Path) -> dict:
    training = TrainingArguments(
        output_dir=str(out), max_steps=100_000, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, eval_strategy="no", save_strategy="no", report_to=[],
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=args.workers,
        seed=args.seed, logging_steps=10, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    budget = WallClockBudget(args.budget)
    trainer = MatchingTrainer(
        model=model, args=training, train_dataset=train_pairs, data_collator=collator,
        processing_class=tokenizer, hinge_warmup_steps=args.hinge_warmup_steps,
        optimizers=(text_encoder_optimizer(model, training), None), callbacks=[budget],
    )  # fmt: skip
    started = time.time()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "steps": budget.steps,
        "train_seconds": round(time.time() - started, 1),
        "last_loss": losses[-1] if losses else None,
    }


def evaluate(model, tokenizer, test, args: argparse.Namespace) -> dict:
    model.eval()
    started = time.time()
    test = tower_feature_split(model, test, batch_size=32)  # a feature split is returned unchanged
    retrieval = evaluate_matchers([model], [tokenizer], test, "full", 5)
    attention = attention_metrics(model, tokenizer, test)
    return {
        "rsum": retrieval["rsum"],
        "attention_precision": attention["attention_precision"],
        "attention_recall": attention["attention_recall"],
        "attention_f1": attention["attention_f1"],
        **own_region_share(model, tokenizer, test, args.max_pairs),
        "eval_seconds": round(time.time() - started, 1),
    }


def tower_throughput(model, batch_size: int, image_size: int, repeats: int = 3) -> float:
    """Images per second through the tower, forward and backward (the region projection included)."""
    model.train()
    pixels = torch.randn(batch_size, 3, image_size, image_size, device=model.device)
    boxes = torch.tensor([[0, 0, image_size, image_size]] * 4, dtype=torch.float32, device=model.device)
    boxes = boxes.expand(batch_size, -1, -1)
    model.get_image_regions(pixels, boxes)[0].sum().backward()  # warm-up
    started = time.time()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        model.get_image_regions(pixels, boxes)[0].sum().backward()
    return batch_size * repeats / (time.time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=200, help="training images")
    parser.add_argument("--test", type=int, default=100, help="test images")
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds per model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--image-size", type=int, default=128, help="network input side for both models (canvas: 224 px)"
    )
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--tower-learning-rate", type=float, default=1e-4)
    parser.add_argument("--freeze-steps", type=int, default=5)
    parser.add_argument("--hinge-warmup-steps", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--max-pairs", type=int, default=300, help="grounded captions for the own-region share"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/end_to_end.json"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = DigitScenesConfig(seed=0, train_images=args.train, validation_images=10, test_images=args.test)
    started = time.time()
    extractor = RegionFeatureExtractor(
        weights=packaged_weights("efficientnet_lite0"), image_size=args.image_size
    )
    features = build_digit_scenes_corpus(config, extractor, progress=False)
    extraction_seconds = round(time.time() - started, 1)
    images = build_digit_scenes_image_corpus(config)
    tokenizer = build_word_tokenizer(ImagePairs(images["train"]).captions, 1)
    feature_dim = len(features["train"][0]["features"][0])
    results = {
        "corpus": f"digit scenes (generated; seed 0; {args.train} train / {args.test} test images, 24 regions)",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "budget_seconds": args.budget,
        "image_size": args.image_size,
        "extraction_seconds_frozen": extraction_seconds,
    }
    frozen = new_model(tokenizer, None, feature_dim)
    run = train(
        frozen,
        tokenizer,
        ImageCaptionPairs(features["train"]),
        RegionCaptionCollator(tokenizer),
        args,
        args.out.parent / "frozen",
    )
    results["frozen"] = {**run, **evaluate(frozen, tokenizer, features["test"], args)}
    print(json.dumps(results["frozen"]), flush=True)
    tower_spec = {
        "architecture": "efficientnet_lite0", "image_size": args.image_size, "regions": "boxes",
        "learning_rate": args.tower_learning_rate, "freeze_steps": args.freeze_steps, "freeze_batchnorm": True,
    }  # fmt: skip
    torch.manual_seed(args.seed)
    tower = new_model(tokenizer, tower_spec, feature_dim)
    collator = ImageCaptionCollator.for_model(tower, tokenizer)
    run = train(tower, tokenizer, ImagePairs(images["train"]), collator, args, args.out.parent / "tower")
    results["tower"] = {**run, **evaluate(tower, tokenizer, images["test"], args)}
    results["tower"]["images_per_second_forward_backward"] = round(
        tower_throughput(tower, 16, args.image_size), 2
    )
    print(json.dumps(results["tower"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
