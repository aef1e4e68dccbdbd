import csv
import io
import json
import math

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import gradient, image_row, jpeg_bytes, make_tree, write_csv
from PIL import Image

from chexpert_hf.data import CheXpertFormatError, label_names, load_prepared, prepare
from chexpert_hf.data import builder as builder_module
from chexpert_hf.data.builder import StrictSkipError
from chexpert_hf.data.prepare import INFO_JSON, SKIPPED_CSV
from chexpert_hf.labels import CHEXPERT_LABELS


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 200), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[:3000]


GOOD = {
    "train/patient00001/study1/view1_frontal.jpg": jpeg_bytes(),
    "train/patient00001/study1/view2_lateral.jpg": jpeg_bytes(),
    "train/patient00002/study1/view1_frontal.jpg": png_bytes(Image.fromarray(gradient())),  # PNG under .jpg
    "train/patient00003/study1/view1_frontal.jpg": png_bytes(Image.new("RGBA", (200, 240), (90, 90, 90, 255))),
    "train/patient00004/study1/view1_frontal.jpg": png_bytes(
        Image.fromarray(gradient().astype(np.uint16) * 16).convert("I;16")
    ),
    "train/patient00005/study1/view1_frontal.jpg": jpeg_bytes(mode="RGB", value=(100, 100, 100)),
}
BAD = {  # path -> (content or None for a missing file, expected reason)
    "train/patient00006/study1/view1_frontal.jpg": (None, "file not found"),
    "train/patient00007/study1/view1_frontal.jpg": (b"", "empty file (0 bytes)"),
    "train/patient00008/study1/view1_frontal.jpg": (b"\xff\xd8garbage" * 10, "not an image"),
    "train/patient00009/study1/view1_frontal.jpg": (truncated_jpeg(), "truncated or corrupt image"),
}


@pytest.fixture
def planted_tree(tmp_path):
    """A tree whose train.csv lists six usable images in odd encodings and four unusable files."""
    files = dict(GOOD)
    files.update({path: content for path, (content, _) in BAD.items() if content is not None})
    files["valid/patient00100/study1/view1_frontal.jpg"] = jpeg_bytes()
    rows = [image_row(path, view="Lateral" if "lateral" in path else "Frontal") for path in sorted([*GOOD, *BAD])]
    return make_tree(tmp_path / "CheXpert-v1.0-small", files, rows=rows)


def test_prepared_schema_and_splits(prepared_dir, synthetic_root):
    dataset = datasets.load_from_disk(str(prepared_dir))
    assert set(dataset) == {"train", "validation", "test"}
    train = dataset["train"]
    assert list(train.features) == ["image", "labels", "path", "patient_id", "study_id", "view", "ap_pa", "sex", "age"]
    assert isinstance(train.features["image"], datasets.Image)
    assert train.features["labels"].length == 14 and train.features["labels"].feature.dtype == "float32"
    assert train.features["age"].dtype == "int32"
    assert label_names(dataset) == list(CHEXPERT_LABELS) == label_names(train)
    info = json.loads((prepared_dir / INFO_JSON).read_text())
    assert info["images"] == {split: len(part) for split, part in dataset.items()}
    assert info["image_size"] == 160 and info["label_names"] == list(CHEXPERT_LABELS)


def test_prepared_rows_match_the_csv(prepared_dir, synthetic_root):
    train = load_prepared(prepared_dir)["train"]
    frame = pd.read_csv(synthetic_root / "train.csv")
    assert train["path"] == frame["Path"].tolist()  # every row, in CSV order
    raw = np.array(train["labels"], dtype=np.float32)
    expected = frame[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(np.isnan(raw), np.isnan(expected))
    np.testing.assert_array_equal(np.nan_to_num(raw, nan=9), np.nan_to_num(expected, nan=9))
    assert {-1.0, 0.0, 1.0} <= set(raw[~np.isnan(raw)].tolist())  # raw: no policy applied
    assert train["view"] == frame["Frontal/Lateral"].str.lower().tolist()
    assert train["ap_pa"] == frame["AP/PA"].fillna("").tolist()
    assert train["age"] == frame["Age"].tolist()
    assert train["patient_id"] == frame["Path"].str.split("/").str[2].tolist()
    image = train[0]["image"]
    assert image.mode == "L" and min(image.size) == 160
    original = Image.open(synthetic_root.parent / frame["Path"][0]).convert("L").resize(image.size)
    difference = np.abs(np.asarray(image, dtype=np.float32) - np.asarray(original, dtype=np.float32)).mean()
    assert difference < 6  # the same picture, resized


def test_test_split_comes_from_groundtruth(prepared_dir, synthetic_root):
    test = load_prepared(prepared_dir)["test"]
    truth = pd.read_csv(synthetic_root / "groundtruth.csv").set_index("Study")
    assert len(test) == len(list((synthetic_root / "test").glob("*/*/*.jpg")))
    for row in test:
        study = row["path"].rsplit("/", 1)[0]
        assert row["labels"] == truth.loc[study, list(CHEXPERT_LABELS)].astype(float).tolist()


@pytest.mark.parametrize("num_proc", [1, 2])
def test_planted_bad_files_are_skipped_counted_and_listed(planted_tree, tmp_path, num_proc):
    output = tmp_path / "out"
    summary = prepare(planted_tree, output, image_size=64, num_proc=num_proc)
    dataset = load_prepared(output)
    assert sorted(dataset["train"]["path"]) == sorted(f"CheXpert-v1.0-small/{p}" for p in GOOD)
    assert summary.images == {"train": 6, "validation": 1}
    assert summary.skipped == {"train": 4, "validation": 0}
    with open(output / SKIPPED_CSV, newline="") as handle:
        skipped = list(csv.DictReader(handle))
    assert [row["path"] for row in skipped] == [f"CheXpert-v1.0-small/{p}" for p in sorted(BAD)]
    for row in skipped:
        assert BAD[row["path"].split("/", 1)[1]][1] in row["reason"]
        assert row["split"] == "train" and row["source"].startswith("train.csv line ")
    assert "4 row(s) skipped: see" in summary.lines()[-1]
    for image in dataset["train"]["image"]:
        assert image.mode == "L" and min(image.size) == 64


@pytest.mark.parametrize("num_proc", [1, 2])
def test_strict_mode_stops_and_leaves_nothing(planted_tree, tmp_path, num_proc):
    output = tmp_path / "out"
    # with workers, the first failure met is any of the four (each worker reports its own)
    bad = "|".join(f"{path}.*{reason}" for path, (_, reason) in BAD.items()).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(StrictSkipError, match=f"({bad}).*strict mode stops at any skip"):
        prepare(planted_tree, output, strict=True, num_proc=num_proc)
    assert not output.exists()
    assert list(tmp_path.glob(".out.tmp-*")) == []


def test_interrupted_prepare_leaves_no_dataset(planted_tree, tmp_path, monkeypatch):
    calls = []

    def interrupted(path, size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return jpeg_bytes()

    monkeypatch.setattr(builder_module, "load_radiograph", interrupted)
    output = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(planted_tree, output)
    assert len(calls) == 3
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [planted_tree]  # no staging folder left behind either


def test_structural_error_leaves_nothing(tmp_path):
    rows = [image_row("train/patient00001/study1/view1_frontal.jpg", ["1.0"] + ["maybe"] + [""] * 12)]
    tree = make_tree(tmp_path / "tree", {"train/patient00001/study1/view1_frontal.jpg": jpeg_bytes()}, rows=rows)
    with pytest.raises(CheXpertFormatError, match="train.csv: line 2, column 'Enlarged Cardiomediastinum'"):
        prepare(tree, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_frontal_only_and_parallel_preparation_agree(synthetic_root, tmp_path):
    serial = prepare(synthetic_root, tmp_path / "serial", image_size=48, frontal_only=True)
    parallel = prepare(synthetic_root, tmp_path / "parallel", image_size=48, frontal_only=True, num_proc=2)
    a, b = load_prepared(tmp_path / "serial")["train"], load_prepared(tmp_path / "parallel")["train"]
    assert set(a["view"]) == {"frontal"}
    lateral = (pd.read_csv(synthetic_root / "train.csv")["Frontal/Lateral"] == "Lateral").sum()
    assert serial.left_out_lateral["train"] == lateral > 0
    assert serial.images == parallel.images
    assert a["path"] == b["path"]  # same rows in the same order
    cast = datasets.Image(decode=False)
    assert a.cast_column("image", cast)["image"] == b.cast_column("image", cast)["image"]


def test_existing_output_needs_overwrite(planted_tree, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        prepare(planted_tree, output)
    assert (output / "keep.txt").read_text() == "mine"
    prepare(planted_tree, output, overwrite=True, image_size=32)
    assert not (output / "keep.txt").exists() and len(load_prepared(output)["train"]) == 6


def test_load_prepared_explains_a_raw_folder(synthetic_root):
    with pytest.raises(FileNotFoundError, match="run `chexpert-hf prepare` on it first"):
        load_prepared(synthetic_root)


def test_builder_used_directly(synthetic_root, tmp_path):
    builder = builder_module.CheXpert(
        config_name="frontal", data_dir=str(synthetic_root), cache_dir=str(tmp_path), image_size=40
    )
    builder.download_and_prepare()
    dataset = builder.as_dataset()
    assert builder.config.frontal_only and set(dataset["validation"]["view"]) == {"frontal"}
    assert min(dataset["validation"][0]["image"].size) == 40
    assert builder.skipped_rows() == []
    assert all(math.isnan(v) or v in (0, 1) for row in dataset["validation"]["labels"] for v in row)


def test_empty_splits_are_kept_empty_not_fatal(tmp_path):
    files = {"train/patient00001/study1/view1_frontal.jpg": b"", "valid/patient00002/study1/view1_frontal.jpg": b""}
    tree = make_tree(tmp_path / "tree", files, valid_rows=[])  # valid.csv has a header only
    (tree / "test" / "patient00003" / "study1").mkdir(parents=True)  # a test study without images
    write_csv(tree / "groundtruth.csv", ["Study", *CHEXPERT_LABELS], [["test/patient00003/study1", *["0"] * 14]])
    summary = prepare(tree, tmp_path / "out")
    dataset = load_prepared(tmp_path / "out")
    assert {split: len(part) for split, part in dataset.items()} == {"train": 0, "validation": 0, "test": 0}
    assert dataset["train"].features == dataset["test"].features and label_names(dataset["validation"])
    assert summary.skipped == {"train": 1, "validation": 0, "test": 1}
    skipped = pd.read_csv(tmp_path / "out" / SKIPPED_CSV)
    assert skipped["reason"].tolist() == ["empty file (0 bytes)", "no images in study folder"]
    assert skipped["source"].tolist() == ["train.csv line 2", "groundtruth.csv line 2"]


def test_output_may_not_replace_its_source(planted_tree):
    for output in (planted_tree, planted_tree.parent):
        with pytest.raises(ValueError, match="would replace the data it is made from"):
            prepare(planted_tree, output, overwrite=True)
    assert (planted_tree / "train.csv").is_file()


def test_output_that_is_a_file(planted_tree, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        prepare(planted_tree, tmp_path / "out", overwrite=True)
