"""Property-based fuzzing of every reader of user files: generated and mutated inputs (truncations, byte
flips, inserted bytes, wrong types, huge numbers) raise nothing but the project's own `UserError`s, each
naming the file.

CI runs a bounded number of examples per reader (profile "ci"); a long run is one command:
    HYPOTHESIS_PROFILE=long pytest tests/test_fuzz_readers.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from convert_files import karpathy_entry, tsv_line, write_karpathy, write_precomp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_ccr.artifacts.loading import load_matcher
from modeling_ccr.data.flickr30k_entities import (
    format_annotation,
    format_sentence_line,
    parse_annotation,
    parse_sentences,
)
from modeling_ccr.data.formats.butd_tsv import read_tsv_rows
from modeling_ccr.data.formats.karpathy import read_karpathy
from modeling_ccr.data.formats.scan_precomp import open_precomp_split
from modeling_ccr.errors import UserError
from modeling_ccr.models.configuration_scan import ScanConfig
from modeling_ccr.models.modeling_scan import ScanModel
from modeling_ccr.text.tokenization import build_word_tokenizer, read_scan_vocabulary
from modeling_ccr.training.experiment import load_experiment_config

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
settings.register_profile("ci", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HUGE = [b"1e309", b"-1", b"99999999999999999999", b"nan", b"0", b"", b"\xff", b'"x"', b"[]", b"{}", b"null"]


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """`valid` after one to three edits: truncation, byte flip, inserted bytes, a deleted or repeated line,
    or a number replaced by a huge, negative, non-numeric or ill-typed value."""
    data = valid
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "drop_line", "repeat_line", "number"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif kind in ("drop_line", "repeat_line"):
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = [] if kind == "drop_line" else [lines[i], lines[i]]
            data = b"\n".join(lines)
        elif kind == "number":
            digits = [i for i, byte in enumerate(data) if chr(byte).isdigit()]
            if digits:
                i = draw(st.sampled_from(digits))
                data = data[:i] + draw(st.sampled_from(HUGE)) + data[i + 1 :]
    return data


def only_user_errors(read, path: Path) -> None:
    """Run a reader; any exception must be a UserError whose one-line message names the file."""
    try:
        read()
    except UserError as err:
        message = str(err)
        assert path.name in message, f"{type(err).__name__} does not name {path.name}: {message}"
        assert "\n" not in message.strip(), message


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------ Flickr30k Entities
PHRASES = [
    {
        "entity_id": "7",
        "phrase": "a red dog",
        "phrase_type": "animals",
        "first_word": 0,
        "num_words": 3,
        "boxes": [[1.0, 2.0, 30.0, 40.0]],
    },
    {
        "entity_id": "8",
        "phrase": "the grass",
        "phrase_type": "scene",
        "first_word": 5,
        "num_words": 2,
        "boxes": [],
    },
]
CAPTION = "a red dog runs on the grass ."
SENTENCES = (format_sentence_line(CAPTION, PHRASES) + "\n").encode() * 2
ANNOTATION = format_annotation("123", [500, 375], [PHRASES]).encode()


@given(data=mutated(SENTENCES) | st.binary(max_size=200))
def test_the_entities_sentences_reader_raises_only_named_user_errors(workdir, data):
    path = workdir / "Sentences_123.txt"
    path.write_bytes(data)
    only_user_errors(lambda: parse_sentences(path), path)


@given(data=mutated(ANNOTATION) | st.binary(max_size=200))
def test_the_entities_annotation_reader_raises_only_named_user_errors(workdir, data):
    path = workdir / "Annotations_123.xml"
    path.write_bytes(data)
    only_user_errors(lambda: parse_annotation(path), path)


# ------------------------------------------------------------------------------ converters' readers
def _precomp_folder(root: Path) -> Path:
    features = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    write_precomp(root, "train", features, [f"a dog number {i}" for i in range(10)], ids=["11", "12"])
    return root


@given(
    target=st.sampled_from(["train_ims.npy", "train_caps.txt", "train_ids.txt"]),
    edit=st.data(),
)
def test_the_precomp_reader_raises_only_named_user_errors(workdir, target, edit):
    folder = workdir / "precomp"
    shutil.rmtree(folder, ignore_errors=True)
    _precomp_folder(folder)
    path = folder / target
    path.write_bytes(edit.draw(mutated(path.read_bytes())))

    def read():
        split = open_precomp_split(folder, "train", captions_per_image=5)
        for _ in split.images():
            pass

    try:
        read()
    except UserError as err:
        assert "train_" in str(err) or str(folder) in str(err), str(err)


VALID_TSV = (
    tsv_line(
        "11", 640, 480, np.array([[0, 0, 10, 10], [5, 5, 50, 60]], np.float32), np.ones((2, 4), np.float32)
    )
    + tsv_line("12", 320, 240, np.array([[1, 1, 9, 9]], np.float32), np.ones((1, 4), np.float32))
).encode()


@given(data=mutated(VALID_TSV))
def test_the_butd_tsv_reader_raises_only_named_user_errors_and_names_bad_rows(workdir, data):
    path = workdir / "features.tsv"
    path.write_bytes(data)
    problems = []

    def read():
        problems.extend(row.problem for row in read_tsv_rows([path]) if row.problem)

    only_user_errors(read, path)
    assert all(isinstance(p, str) and p for p in problems)


VALID_KARPATHY = json.dumps(
    {
        "images": [
            karpathy_entry("11", "train", 0, ["a dog", "a cat"], 0),
            karpathy_entry("12", "val", 1, ["x", "y"], 2),
        ]
    }
).encode()


@given(data=mutated(VALID_KARPATHY) | st.binary(max_size=100))
def test_the_karpathy_reader_raises_only_named_user_errors(workdir, data):
    path = workdir / "dataset_flickr30k.json"
    path.write_bytes(data)
    only_user_errors(lambda: read_karpathy(path), path)


@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=10,
    )
)
def test_the_karpathy_reader_survives_any_json_value_in_any_field(workdir, value):
    entry = karpathy_entry("11", "train", 0, ["a dog"], 0)
    for key in ("filename", "imgid", "split", "sentids", "sentences"):
        path = write_karpathy(workdir / "dataset_typed.json", [{**entry, key: value}])
        only_user_errors(lambda p=path: read_karpathy(p), path)


# ------------------------------------------------------------------------------ SCAN vocabulary import
WORDS = ["<pad>", "<start>", "<end>", "<unk>", "dog", "cat"]
VALID_VOCAB = json.dumps(
    {
        "word2idx": {w: i for i, w in enumerate(WORDS)},
        "idx2word": {str(i): w for i, w in enumerate(WORDS)},
        "idx": 6,
    }
).encode()


@given(data=mutated(VALID_VOCAB) | st.binary(max_size=100))
def test_the_scan_vocabulary_reader_raises_only_named_user_errors(workdir, data):
    path = workdir / "f30k_precomp_vocab.json"
    path.write_bytes(data)
    only_user_errors(lambda: read_scan_vocabulary(path), path)


# ------------------------------------------------------------------------------ run configuration YAML
VALID_YAML = b"""seed: 0
output_dir: runs/x
data:
  source: synthetic
  synthetic: {train_images: 10}
  min_word_count: 4
model:
  backbone: scan
  ccr_weight: 0.1
training:
  learning_rate: 2e-4
  max_steps: 100
  lr_decay_epochs: 15
"""


@given(data=mutated(VALID_YAML) | st.binary(max_size=120))
def test_the_run_configuration_reader_raises_only_named_user_errors(workdir, data):
    path = workdir / "run_config.yaml"
    path.write_bytes(data)
    only_user_errors(lambda: load_experiment_config(path), path)


# ------------------------------------------------------------------------------ model folder files
@pytest.fixture(scope="module")
def model_folder(workdir) -> Path:
    tokenizer = build_word_tokenizer(["a dog", "a cat"], min_count=1)
    config = ScanConfig(feature_dim=4, embed_dim=4, word_dim=4, vocab_size=len(tokenizer))
    folder = workdir / "model"
    ScanModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pristine(model_folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model_folder.iterdir() if p.is_file()}


@settings(max_examples=int(os.environ.get("FUZZ_MODEL_EXAMPLES", 15)))
@given(
    target=st.sampled_from(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]),
    edit=st.data(),
)
def test_model_folder_loading_raises_only_named_user_errors(model_folder, pristine, target, edit):
    for name, data in pristine.items():
        (model_folder / name).write_bytes(data)
    path = model_folder / target
    path.write_bytes(edit.draw(mutated(pristine[target])))
    try:
        load_matcher(model_folder)
    except UserError as err:
        assert str(model_folder) in str(err), str(err)


def test_a_tokenizer_json_that_only_python_reads_as_json_is_a_named_load_error(model_folder, pristine):
    # Found by the long profile: Python's json accepts NaN, the Rust tokenizers library does not and
    # raised a bare Exception ("expected `,` or `}` at line 2 column 12").
    for name, data in pristine.items():
        (model_folder / name).write_bytes(data)
    broken = pristine["tokenizer.json"].replace(b'"version": "1.0"', b'"version": NaN', 1)
    assert broken != pristine["tokenizer.json"]
    (model_folder / "tokenizer.json").write_bytes(broken)
    with pytest.raises(UserError, match="the tokenizer cannot be loaded") as raised:
        load_matcher(model_folder)
    assert str(model_folder) in str(raised.value)
    (model_folder / "tokenizer.json").write_bytes(pristine["tokenizer.json"])


def test_a_precomp_array_whose_header_is_cut_inside_its_shape_is_a_named_error(workdir):
    # Found by the long profile: numpy's fallback header parse raised tokenize.TokenError.
    folder = _precomp_folder(workdir / "precomp_cut_header")
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, \n"
    (folder / "train_ims.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    only_user_errors(
        lambda: open_precomp_split(folder, "train", captions_per_image=5), folder / "train_ims.npy"
    )
    with pytest.raises(UserError):
        open_precomp_split(folder, "train", captions_per_image=5)


def test_a_precomp_array_whose_header_shape_overflows_is_a_named_error(workdir):
    # Found by the long profile: numpy's memmap raised OverflowError for a shape of 1e20 rows.
    folder = _precomp_folder(workdir / "precomp_overflow")
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3, 4), }"
    header = header.ljust(117) + b"\n"
    (folder / "train_ims.npy").write_bytes(
        b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(96)
    )
    only_user_errors(
        lambda: open_precomp_split(folder, "train", captions_per_image=5), folder / "train_ims.npy"
    )


# ------------------------------------------------------------------------------ images for ccr extract
def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@given(data=st.one_of(st.binary(max_size=64), st.just(_png()).flatmap(mutated)))
def test_the_image_reader_of_ccr_extract_raises_only_named_user_errors(workdir, data):
    read_image = pytest.importorskip("modeling_ccr.vision.processor").read_image  # the vision extra

    path = workdir / "photo.png"
    path.write_bytes(data)
    only_user_errors(lambda: read_image(path), path)


# ------------------------------------------------------------------------------ text hygiene, every text reader
# Each reader gets its clean file with a byte-order mark or not, its line endings rewritten (LF, CR LF, lone
# CR, or a mix line by line) and at most one fault: a non-UTF-8 byte, or its last line cut inside (the
# newline and possibly more gone). Without a fault it must read exactly the clean file's records; with one,
# it may only read the clean records or refuse with a one-line UserError naming the file, and the readers
# whose format ends every line with a newline must refuse a cut last line (data/text_files.py).
BOM = b"\xef\xbb\xbf"
ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
NOT_UTF8 = [b"\xff", b"\xfe", b"\xc3", b"\x80", b"\xed\xa0\x80"]


@st.composite
def hygiene(draw, clean: bytes, cut: bool = True) -> tuple[bytes, str]:
    """(data, fault): `clean` (every line ended by "\\n") re-encoded as above; fault is "", "bytes" or "cut"."""
    lines = clean.split(b"\n")
    assert lines[-1] == b"", "clean files end with a newline"
    lines = lines[:-1]
    style = draw(st.sampled_from([*ENDINGS, "mixed"]))
    ends = [
        ENDINGS[style] if style != "mixed" else draw(st.sampled_from(list(ENDINGS.values()))) for _ in lines
    ]
    fault = draw(st.sampled_from(["", "", "bytes", "cut"] if cut else ["", "", "bytes"]))
    if fault == "cut":
        last = lines[-1]
        lines[-1], ends[-1] = last[: draw(st.integers(1, len(last)))], b""
    data = b"".join(line + end for line, end in zip(lines, ends, strict=True))
    if fault == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(NOT_UTF8)) + data[at:]
    return (BOM if draw(st.booleans()) else b"") + data, fault


def _entities_as_converted(path: Path):
    """The Entities sentences of image 123 checked against the corpus captions, as the converters do."""
    from modeling_ccr.data.formats.convert import ConversionReport, ground_with_entities

    try:
        return ground_with_entities(path.parent.parent, "123", [CAPTION, CAPTION], None)
    except ValueError as error:
        ConversionReport("corpus").skip("test", "123", str(error), skip_bad=False)


def _precomp(folder: Path):
    split = open_precomp_split(folder, "train", captions_per_image=5)
    return split.captions, split.image_ids


def _tsv(path: Path):
    return [
        (r.image_id, r.problem, None if r.features is None else r.features.tobytes())
        for r in read_tsv_rows([path])
    ]


def _captions(path: Path):
    from modeling_ccr.vision.corpus import read_captions

    return read_captions(path)


CAPTIONS_CSV = (
    b'image,caption,split\na.jpg,"a red dog, running",train\nb.jpg,a blue boat,test\na.jpg,a dog,train\n'
)
CAPTIONS_JSONL = b'{"image": "a.jpg", "caption": "a red dog"}\n{"image": "b.jpg", "captions": ["x", "y"], "split": "val"}\n'
KARPATHY_LINES = (json.dumps(json.loads(VALID_KARPATHY), indent=1) + "\n").encode()
# (file to rewrite, clean bytes, read(path) -> records, what a cut last line must give: "refused", "same or
# refused", or None: not drawn (the run configuration; see the strict expected failure below))
TEXT_READERS = {
    "precomp-captions": ("precomp/train_caps.txt", None, lambda p: _precomp(p.parent), "refused"),
    "precomp-ids": ("precomp/train_ids.txt", None, lambda p: _precomp(p.parent), "refused"),
    "butd-tsv": ("features.tsv", VALID_TSV, _tsv, "refused"),
    "karpathy": ("dataset_flickr30k.json", KARPATHY_LINES, read_karpathy, "same or refused"),
    "entities-sentences": (
        "entities/Sentences/123.txt",
        SENTENCES,
        _entities_as_converted,
        "same or refused",
    ),
    "entities-annotation": ("entities/Annotations/123.xml", ANNOTATION, parse_annotation, "same or refused"),
    "extract-csv": ("captions.csv", CAPTIONS_CSV, _captions, "refused"),
    "extract-jsonl": ("captions.jsonl", CAPTIONS_JSONL, _captions, "same or refused"),
    "extract-karpathy": ("captions.json", KARPATHY_LINES, _captions, "same or refused"),
    "scan-vocabulary": (
        "f30k_precomp_vocab.json",
        VALID_VOCAB + b"\n",
        read_scan_vocabulary,
        "same or refused",
    ),
    "run-config": ("run_config.yaml", VALID_YAML, load_experiment_config, None),
}


@pytest.fixture(scope="module")
def text_files(workdir) -> Path:
    root = workdir / "text"
    _precomp_folder(root / "precomp")
    (root / "entities" / "Sentences").mkdir(parents=True)
    (root / "entities" / "Annotations").mkdir(parents=True)
    (root / "entities" / "Annotations" / "123.xml").write_bytes(ANNOTATION)
    return root


@pytest.mark.parametrize("reader", sorted(TEXT_READERS))
@given(edit=st.data())
def test_every_text_reader_reads_boms_and_line_endings_as_the_clean_file_or_refuses_in_one_line(
    text_files, reader, edit
):
    name, clean, read, cut = TEXT_READERS[reader]
    path = text_files / name
    if clean is None:  # the precomp files as _precomp_folder wrote them
        clean = {
            "train_caps.txt": "".join(f"a dog number {i}\n" for i in range(10)),
            "train_ids.txt": "11\n12\n",
        }[path.name].encode()
    path.write_bytes(clean)
    expected = read(path)
    data, fault = edit.draw(hygiene(clean, cut=cut is not None))
    path.write_bytes(data)
    try:
        records = read(path)
    except UserError as err:
        message = str(err)
        assert fault, f"a clean file with a BOM or other line endings was refused: {message}"
        assert path.name in message and "\n" not in message.strip(), message
        return
    finally:
        path.write_bytes(clean)
    assert fault != "bytes", "a non-UTF-8 byte was read without a word"
    assert not (fault == "cut" and cut == "refused"), "a last line cut off was read without a word"
    assert records == expected, f"{fault or 'clean'} input read as other records"
