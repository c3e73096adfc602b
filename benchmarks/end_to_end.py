"""Digit scenes end to end: does a digit word's attention find its digit, and does it drift to the digit's
habitat texture? Frozen tower features against the tower fine-tuned with the matcher.

On the digit scenes (a generated corpus: handwritten digits on a canvas, a "habitat" texture drawn beside a
digit with probability `context_cooccurrence`, captions naming the digits, gold boxes), trains SCAN
t2i-AVG (256-d) with a timm vision tower (EfficientNet-Lite0 from its packaged ImageNet weights):
- frozen: the tower run once over every image (no gradient; `tower_feature_split`), then the matcher
  trained on those region features; the extraction time is reported, not counted;
- tower: the same network inside the model, trained end to end (its own learning rate, frozen for the
  first steps, BatchNorm statistics fixed).
Both at the same input size, feature level and regions, for the same step count or wall-clock budget.
Reports test rSum, attention P / R / F1, and from `modeling_ccr.evaluation.attention_drift` the share of a
digit word's attention on its own digit's region(s) against uniform, how often that region is the most
attended, and the drift: the share on the digit's habitat texture against on an unrelated texture in the
same image, under both region rules ("best": the one region of highest IoU; "inside": the regions at least
half inside the box). The defaults are the settings chosen for the ablation grid (docs/ablation.md, "Corpus
settings"): 224 px, feature stage 3, the corpus's 24 boxes, the frozen model, 250 steps. Numbers are for this
corpus and machine only (docs/end_to_end.md).

    python benchmarks/end_to_end.py --seed 0 --out runs/e2e/base_seed0.json            # the chosen base
    python benchmarks/end_to_end.py --models frozen,tower --budget 300 --max-steps 0     # same wall clock
    python benchmarks/end_to_end.py --feature-level -1 --image-size 128 --regions grid   # another setting
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from modeling_ccr.data.collator import ImageCaptionCollator, RegionCaptionCollator
from modeling_ccr.data.image_corpus import ImagePairs, tower_feature_split
from modeling_ccr.data.pairs import ImageCaptionPairs
from modeling_ccr.evaluation.attention_drift import REGION_RULES, drift_from_attentions
from modeling_ccr.evaluation.gallery import attention_metrics, evaluate_matchers, grounded_word_attentions
from modeling_ccr.models import BACKBONES
from modeling_ccr.text.tokenization import build_word_tokenizer
from modeling_ccr.training.text_encoders import text_encoder_optimizer
from modeling_ccr.training.trainer import MatchingTrainer
from modeling_ccr.vision.digit_scenes import (
    DIGIT_PHRASE_TYPE,
    HABITAT_TEXTURES,
    DigitScenesConfig,
    build_digit_scenes_image_corpus,
    scene_textures,
)

MODEL = {"embed_dim": 256, "direction": "t2i", "aggregation": "avg", "lambda_softmax": 9.0}
MODELS = ("frozen", "tower")


class TrainingBudget(TrainerCallback):
    """Stop training once `seconds` of training time have passed or `max_steps` steps were taken."""

    def __init__(self, seconds: float | None, max_steps: int | None):
        self.seconds = seconds
        self.max_steps = max_steps
        self.started = None
        self.steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step
        out_of_time = self.seconds is not None and time.time() - self.started >= self.seconds
        if out_of_time or (self.max_steps is not None and self.steps >= self.max_steps):
            control.should_training_stop = True


def new_model(tokenizer, tower: dict | None, feature_dim: int, lambda_softmax: float):
    config_class, model_class = BACKBONES["scan"]
    options = {"vision_tower": tower} if tower else {"feature_dim": feature_dim}
    config = config_class(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **{**MODEL, "lambda_softmax": lambda_softmax}, **options,
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
    budget = TrainingBudget(args.budget, args.max_steps)
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
        "epochs": round(budget.steps * args.batch_size / len(train_pairs), 2),
        "train_seconds": round(time.time() - started, 1),
        "last_loss": losses[-1] if losses else None,
    }


def evaluate(model, tokenizer, test, contexts, args: argparse.Namespace) -> dict:
    """Retrieval, attention P/R/F1 and the drift measure on the test split (encoded once if images)."""
    model.eval()
    started = time.time()
    test = tower_feature_split(model, test, batch_size=32)  # a feature split is returned unchanged
    retrieval = evaluate_matchers([model], [tokenizer], test, "full", 5)
    try:
        attention = attention_metrics(model, tokenizer, test)
    except ValueError:  # no region has IoU >= 0.5 with a gold box (fine grid cells): P/R/F1 undefined
        attention = dict.fromkeys(("attention_precision", "attention_recall", "attention_f1"))
    result = {
        "rsum": retrieval["rsum"],
        "attention_precision": attention["attention_precision"],
        "attention_recall": attention["attention_recall"],
        "attention_f1": attention["attention_f1"],
        "n_regions": len(test[0]["boxes"]),
    }
    pairs = list(grounded_word_attentions(model, tokenizer, test, max_pairs=args.max_pairs))
    image_ids = [str(i) for i in test["image_id"]]
    for rule in REGION_RULES:  # the attention is computed once, read under each region rule
        result[f"drift_{rule}"] = drift_from_attentions(
            pairs,
            image_ids,
            contexts,
            HABITAT_TEXTURES,
            model.attention_direction,
            (DIGIT_PHRASE_TYPE,),
            rule,
        )
    result["eval_seconds"] = round(time.time() - started, 1)
    return result


def tower_throughput(model, batch_size: int, image_size: int, repeats: int = 2) -> float:
    """Images per second through the tower, forward and backward (the region projection included)."""
    model.train()
    pixels = torch.randn(batch_size, 3, image_size, image_size, device=model.device)
    boxes = None
    if model.config.vision_tower["regions"] == "boxes":
        boxes = torch.tensor([[0, 0, image_size, image_size]] * 4, dtype=torch.float32, device=model.device)
        boxes = boxes.expand(batch_size, -1, -1)
    model.get_image_regions(pixels, boxes)[0].sum().backward()  # warm-up
    started = time.time()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        model.get_image_regions(pixels, boxes)[0].sum().backward()
    return batch_size * repeats / (time.time() - started)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="frozen", help=f"comma-separated, of {MODELS}")
    parser.add_argument("--train", type=int, default=200, help="training images")
    parser.add_argument("--test", type=int, default=100, help="test images")
    parser.add_argument("--budget", type=float, default=0.0, help="training seconds per model (0: none)")
    parser.add_argument("--max-steps", type=int, default=250, help="training steps per model (0: none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224, help="tower input side (canvas: 224 px)")
    parser.add_argument(
        "--feature-level", type=int, default=3, help="tower feature stage (-1: final features)"
    )
    parser.add_argument(
        "--regions", choices=("grid", "boxes"), default="boxes",
        help="grid: every cell of the tower's map; boxes: the corpus's 8 component slots + 4 x 4 grid",
    )  # fmt: skip
    parser.add_argument("--grid", type=int, default=None, help="grid regions pooled to grid x grid")
    parser.add_argument(
        "--digit-sizes", type=int, nargs=2, default=(40, 64), metavar=("SMALL", "LARGE"),
        help="glyph sides of small and large digits, pixels",
    )  # fmt: skip
    parser.add_argument("--context-cooccurrence", type=float, default=0.85)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lambda-softmax", type=float, default=9.0)
    parser.add_argument("--tower-learning-rate", type=float, default=1e-4)
    parser.add_argument("--freeze-steps", type=int, default=5)
    parser.add_argument(
        "--train-batchnorm", action="store_true", help="let BatchNorm statistics update in the tower"
    )
    parser.add_argument("--hinge-warmup-steps", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--max-pairs", type=int, default=300, help="grounded captions for the drift measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/end_to_end.json"))
    args = parser.parse_args()
    args.budget = args.budget or None
    args.max_steps = args.max_steps or None
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"--models must name some of {MODELS}, found {args.models}")
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    config = DigitScenesConfig(
        seed=0, train_images=args.train, validation_images=10, test_images=args.test,
        digit_sizes={"small": args.digit_sizes[0], "large": args.digit_sizes[1]},
        context_cooccurrence=args.context_cooccurrence,
    )  # fmt: skip
    images = build_digit_scenes_image_corpus(config)
    contexts = scene_textures(config, "test")
    tokenizer = build_word_tokenizer(ImagePairs(images["train"]).captions, 1)
    tower_spec = {
        "architecture": "efficientnet_lite0", "image_size": args.image_size, "regions": args.regions,
        "grid": args.grid, "feature_level": args.feature_level, "learning_rate": args.tower_learning_rate,
        "freeze_steps": args.freeze_steps, "freeze_batchnorm": not args.train_batchnorm,
    }  # fmt: skip
    results = {
        "corpus": (
            f"digit scenes (generated corpus; seed 0; {args.train} train / {args.test} test images of 224 px, "
            f"digit sides {args.digit_sizes[0]}/{args.digit_sizes[1]} px, context_cooccurrence "
            f"{args.context_cooccurrence})"
        ),
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads"
        ),
        "command": "python benchmarks/end_to_end.py " + " ".join(os.sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tower_spec": tower_spec,
    }
    torch.manual_seed(args.seed)
    tower = new_model(tokenizer, tower_spec, 0, args.lambda_softmax)
    if "frozen" in args.models:
        started = time.time()
        train_features = tower_feature_split(tower, images["train"], batch_size=32)
        test_features = tower_feature_split(tower, images["test"], batch_size=32)
        results["extraction_seconds_frozen"] = round(time.time() - started, 1)
        torch.manual_seed(args.seed)
        frozen = new_model(tokenizer, None, tower.config.feature_dim, args.lambda_softmax)
        pairs = ImageCaptionPairs(train_features)
        run = train(
            frozen, tokenizer, pairs, RegionCaptionCollator(tokenizer), args, args.out.parent / "frozen"
        )
        results["frozen"] = {**run, **evaluate(frozen, tokenizer, test_features, contexts, args)}
        print(json.dumps(results["frozen"]), flush=True)
    if "tower" in args.models:
        collator = ImageCaptionCollator.for_model(tower, tokenizer)
        run = train(tower, tokenizer, ImagePairs(images["train"]), collator, args, args.out.parent / "tower")
        results["tower"] = {**run, **evaluate(tower, tokenizer, images["test"], contexts, args)}
        results["tower"]["images_per_second_forward_backward"] = round(
            tower_throughput(tower, 16, args.image_size), 2
        )
        print(json.dumps(results["tower"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
