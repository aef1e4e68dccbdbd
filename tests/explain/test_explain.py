"""``chexpert-hf explain`` end to end on tiny saved models and the synthetic tree: the documented files, the
pointing game recomputed by hand from the written maps, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image

from chexpert_hf.cli.main import main
from chexpert_hf.data.builder import label_names
from chexpert_hf.data.prepare import load_prepared
from chexpert_hf.explain import run as explain_module
from chexpert_hf.explain.localization import DEFAULT_TOLERANCE, pointing_hit, read_lesions
from chexpert_hf.labels import COMPETITION_LABELS, reorder_labels

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)

SNAKE = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural_effusion",
}


def saved(tmp_path_factory, family: str, image_size: int = 32) -> Path:
    folder = tmp_path_factory.mktemp(family) / "model"
    with torch.random.fork_rng(devices=[]):  # the same weights whichever tests ran before
        torch.manual_seed(0)
        built = tiny_model(family, image_size=image_size)
    built.model.save_pretrained(folder)
    built.processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> Path:
    return saved(tmp_path_factory, "vit")


def frontal_validation(prepared_dir: Path):
    dataset = load_prepared(prepared_dir)
    rows = dataset["validation"]
    keep = [i for i, view in enumerate(rows["view"]) if view == "frontal"]
    rows = rows.select(keep)
    raw = reorder_labels(np.asarray(rows["labels"], dtype=np.float32), label_names(dataset), COMPETITION_LABELS)
    return rows, raw


def test_explain_a_prepared_split_writes_the_documented_files_and_scores_them(
    vit_dir, prepared_dir, synthetic_root, tmp_path, capsys
):
    output = tmp_path / "explained"
    lesions_csv = synthetic_root / "lesions.csv"
    assert (
        main(
            [
                "explain",
                "--model",
                str(vit_dir),
                "--data",
                str(prepared_dir),
                "--num-images",
                "0",
                "--lesions",
                str(lesions_csv),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    # the default method for a ViT: attention relevance, which measured best (docs/explain.md)
    assert "attention_relevance: pointing game (tolerance 15 px)" in printed and "randomized model: Spearman" in printed

    rows, raw = frontal_validation(prepared_dir)
    stems = [f"{p.split('/')[-3]}_{p.split('/')[-2]}_{Path(p).stem}" for p in rows["path"]]
    assert len(set(stems)) == len(stems) == len(rows)
    expected = {f"{stem}__{SNAKE[label]}.png" for stem in stems for label in COMPETITION_LABELS}
    expected |= {f"{stem}__sheet.png" for stem in stems} | {"heatmaps.npz", "localization.json"}
    assert {path.name for path in output.iterdir()} == expected
    assert not list(tmp_path.glob(".explained.partial-*"))

    lesions = read_lesions(lesions_csv)
    localization = json.loads((output / "localization.json").read_text())
    assert localization["images"] == len(rows) and localization["tolerance_px"] == DEFAULT_TOLERANCE
    assert localization["lesions"] == "lesions.csv"  # a name, never a local path
    result = localization["methods"]["attention_relevance"]
    assert result["randomization"]["maps"] == len(rows) * len(COMPETITION_LABELS)
    with np.load(output / "heatmaps.npz") as maps:
        assert set(maps.files) == {f"{stem}/{label}" for stem in stems for label in COMPETITION_LABELS}
        counted = {}
        for index, (stem, path, image) in enumerate(zip(stems, rows["path"], rows["image"], strict=True)):
            original = Image.open(synthetic_root.parent / path)
            for column, label in enumerate(COMPETITION_LABELS):
                heatmap = maps[f"{stem}/{label}"]
                # the map is at the size of the image explained (the 160 px prepared copy), in [0, 1]
                assert heatmap.shape == (image.height, image.width) and heatmap.dtype == np.float16
                assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
                boxes = lesions.for_image(path.split("/", 1)[1].lower(), label)
                if raw[index, column] == 1 and boxes:  # a positive with a box: one pointing-game trial
                    scale = (image.width / original.width, image.height / original.height)
                    assert scale[0] == pytest.approx(0.5, abs=0.01)  # 320 px originals, prepared at 160
                    hits, trials = counted.get(label, (0, 0))
                    counted[label] = (hits + pointing_hit(heatmap, boxes, DEFAULT_TOLERANCE, scale), trials + 1)
    assert counted, "the synthetic validation set has positives with lesion boxes"
    # label specificity: each finding's map against the other findings' boxes, counted here from the archive
    with np.load(output / "heatmaps.npz") as maps:
        right, wrong, images = {}, {}, 0
        for index, (stem, path, image) in enumerate(zip(stems, rows["path"], rows["image"], strict=True)):
            original = Image.open(synthetic_root.parent / path)
            scale = (image.width / original.width, image.height / original.height)
            boxes = {label: lesions.for_image(path.split("/", 1)[1].lower(), label) for label in COMPETITION_LABELS}
            findings = [label for c, label in enumerate(COMPETITION_LABELS) if raw[index, c] == 1 and boxes[label]]
            if len(findings) < 2:
                continue
            images += 1
            for label in findings:
                heatmap = maps[f"{stem}/{label}"]
                hit = [pointing_hit(heatmap, boxes[other], DEFAULT_TOLERANCE, scale) for other in findings]
                right.setdefault(label, []).append(hit[findings.index(label)])
                wrong.setdefault(label, []).extend(h for other, h in zip(findings, hit, strict=True) if other != label)
    specificity = result["label_specificity"]
    assert images and specificity["images"] == images
    for label, entry in specificity["per_label"].items():
        assert entry["right_label_hit_rate"] == pytest.approx(np.mean(right[label]))
        assert entry["wrong_label_hit_rate"] == pytest.approx(np.mean(wrong[label]))
    assert "wrong-label" in printed
    assert {label: (entry["hits"], entry["positives"]) for label, entry in result["per_label"].items()} == counted
    for entry in result["per_label"].values():
        assert 0.0 < entry["uniform_random_hit_rate"] < 1.0
        assert 0.0 <= entry["randomized_model_hit_rate"] <= 1.0
        assert entry["hit_rate"] == pytest.approx(entry["hits"] / entry["positives"])


def test_explain_image_files_skips_unreadable_ones_and_writes_one_folder_per_method(
    vit_dir, synthetic_root, tmp_path, capsys
):
    images = sorted((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    output = tmp_path / "files"
    assert (
        main(
            [
                "explain",
                "--model",
                str(vit_dir),
                "--images",
                *map(str, images),
                str(broken),
                "--top-k",
                "2",
                "--method",
                "gradcam,gradcam++,attention_rollout",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"skipped unreadable image {broken}" in err and "skipped 1 of 4 images" in err
    assert sorted(path.name for path in output.iterdir()) == ["attention_rollout", "gradcam", "gradcam++"]
    for method in ("gradcam", "gradcam++", "attention_rollout"):
        overlays = [path for path in (output / method).glob("*.png") if not path.name.endswith("__sheet.png")]
        assert len(overlays) == 3 * 2  # each image's two most probable labels
        with np.load(output / method / "heatmaps.npz") as maps:
            assert len(maps.files) == 6
            assert all(maps[key].shape == (390, 320) for key in maps.files)  # the files' own size
        sheet = Image.open(next((output / method).glob("*__sheet.png")))
        assert sheet.width > 3 * 256  # the radiograph and two overlays


def test_explain_the_hybrid_at_its_cnn_stage_needs_trust_remote_code(
    tmp_path_factory, synthetic_root, tmp_path, capsys
):
    model_dir = saved(tmp_path_factory, "resnet_vit")
    image = str(next((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg")))
    args = ["explain", "--model", str(model_dir), "--images", image, "--labels", "Edema", "--output"]
    assert main([*args, str(tmp_path / "refused"), "--target-layer", "cnn"]) == 2
    assert "--trust_remote_code" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main([*args, str(tmp_path / "cnn"), "--target-layer", "cnn", "--trust-remote-code"]) == 0
    assert len(list((tmp_path / "cnn").glob("patient*_study1_view1_frontal__edema.png"))) == 1
    assert main([*args, str(tmp_path / "tokens"), "--trust-remote-code"]) == 0
    with np.load(tmp_path / "cnn" / "heatmaps.npz") as cnn, np.load(tmp_path / "tokens" / "heatmaps.npz") as tokens:
        (key,) = cnn.files
        assert not np.allclose(cnn[key], tokens[key])  # the two layers give two different maps


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--labels", "Edema,Fracture"],
            "the model has no label 'Fracture'; its labels: Atelectasis, Cardiomegaly, "
            "Consolidation, Edema, Pleural Effusion",
        ),
        (["--method", "attention_rollout"], None),  # ViT supports it: no error
        (["--method", "lime"], "unknown method"),
        (["--top-k", "9"], "--top-k must be between 1 and 5"),
        (["--target-layer", "cnn"], "vit has no target layer 'cnn'; its layers: tokens"),
    ],
)
def test_explain_errors_name_what_is_allowed(vit_dir, synthetic_root, tmp_path, capsys, extra, message):
    image = str(next((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg")))
    code = main(["explain", "--model", str(vit_dir), "--images", image, "--output", str(tmp_path / "out"), *extra])
    if message is None:
        assert code == 0
    else:
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_rollout_on_swin_lists_the_methods_swin_supports(tmp_path_factory, synthetic_root, tmp_path, capsys):
    model_dir = saved(tmp_path_factory, "swin")
    image = str(next((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg")))
    assert (
        main(
            [
                "explain",
                "--model",
                str(model_dir),
                "--images",
                image,
                "--method",
                "attention_rollout",
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "swin supports: gradcam, gradcam++" in capsys.readouterr().err


def test_explain_refuses_bad_combinations_before_any_work(vit_dir, prepared_dir, synthetic_root, tmp_path, capsys):
    image = str(next((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg")))
    base = ["explain", "--model", str(vit_dir), "--output", str(tmp_path / "out")]
    assert main(base) == 2 and "give either --images" in capsys.readouterr().err
    assert main([*base, "--images", image, "--data", str(prepared_dir)]) == 2
    assert "give either --images" in capsys.readouterr().err
    assert main([*base, "--images", image, "--top-k", "2", "--lesions", str(synthetic_root / "lesions.csv")]) == 2
    assert "instead of --top-k" in capsys.readouterr().err
    assert main([*base, "--images", str(tmp_path / "missing.png")]) == 2
    assert "none of the images could be read" in capsys.readouterr().err
    assert main([*base, "--data", str(prepared_dir), "--split", "test", "--views", "all", "--num-images", "1"]) == 0
    assert main([*base, "--images", image]) == 2  # the output exists now
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*base, "--images", image, "--overwrite"]) == 0


def test_a_failed_run_leaves_no_output_behind(vit_dir, synthetic_root, tmp_path, monkeypatch):
    images = [str(p) for p in sorted((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg"))[:3]]
    calls = []

    def failing_sheet(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")

    monkeypatch.setattr(explain_module, "write_sheet", failing_sheet)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["explain", "--model", str(vit_dir), "--images", *images, "--output", str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []


def test_image_files_with_lesions_count_only_label_one_as_positive(vit_dir, synthetic_root, tmp_path):
    """Uncertain findings have boxes too; with files (no split labels) valid.csv next to lesions.csv decides."""
    lesions = read_lesions(synthetic_root / "lesions.csv")
    images = sorted((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg"))
    expected = {}
    for image in images:
        key = str(image.relative_to(synthetic_root)).lower()
        for label in COMPETITION_LABELS:
            if lesions.for_image(key, label) and lesions.positive(key, label):
                expected[label] = expected.get(label, 0) + 1
    assert (
        main(
            [
                "explain",
                "--model",
                str(vit_dir),
                "--images",
                *map(str, images),
                "--lesions",
                str(synthetic_root / "lesions.csv"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "out" / "localization.json").read_text())["methods"]["attention_relevance"]
    assert {label: entry["positives"] for label, entry in result["per_label"].items()} == expected


def test_repeated_file_names_get_numbered_names_that_never_collide():
    from chexpert_hf.explain.run import unique_stems

    assert unique_stems(["x/a.png", "y/a.png", "a-2.png", "z/a.jpg"]) == ["a", "a-2", "a-2-2", "a-3"]


def test_the_output_is_never_the_working_directory_nor_a_folder_that_is_not_an_earlier_output(
    vit_dir, synthetic_root, tmp_path, monkeypatch, capsys
):
    image = str(next((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("precious")
    base = ["explain", "--model", str(vit_dir), "--images", image, "--overwrite", "--output"]
    assert main([*base, "."]) == 2 and "working directory" in capsys.readouterr().err
    assert main([*base, str(vit_dir.parent)]) == 2 and "which explain reads" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.md").write_text("mine")
    assert main([*base, "notes"]) == 2 and "earlier explain output only" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious" and (tmp_path / "notes" / "todo.md").is_file()
    assert main([*base, "maps"]) == 0 and main([*base, "maps"]) == 0  # an earlier output is replaced
    assert (tmp_path / "maps").stat().st_mode & 0o777 == 0o777 & ~_umask()  # an ordinary folder, not mkdtemp's 700
    assert main([*base, "x", "--batch-size", "0"]) == 2 and "--batch_size must be at least 1" in capsys.readouterr().err


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_images_whose_original_is_missing_are_counted_once_whatever_the_methods(
    vit_dir, synthetic_root, tmp_path, capsys
):
    """lesions.csv copied away from its images: each image with boxes is noted once, not once per method."""
    import shutil

    lonely = tmp_path / "elsewhere" / "lesions.csv"
    lonely.parent.mkdir()
    shutil.copy(synthetic_root / "lesions.csv", lonely)
    lesions = read_lesions(lonely)
    images = sorted((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg"))[:4]
    with_boxes = sum(1 for image in images if str(image.relative_to(synthetic_root)).lower() in lesions.boxes)
    assert with_boxes > 0
    assert (
        main(
            [
                "explain",
                "--model",
                str(vit_dir),
                "--images",
                *map(str, images),
                "--lesions",
                str(lonely),
                "--method",
                "gradcam,gradcam++",
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert f"note: {with_boxes} image(s) whose original file was not found" in capsys.readouterr().out


def test_sheets_show_the_labels_the_boxes_and_a_colour_bar(
    vit_dir, prepared_dir, synthetic_root, tmp_path, monkeypatch
):
    drawn = []
    real = explain_module.write_sheet

    def record(path, image, overlays, titles, **kwargs):
        layout = real(path, image, overlays, titles, **kwargs)
        drawn.append((image.size, titles, kwargs, layout))
        return layout

    monkeypatch.setattr(explain_module, "write_sheet", record)
    lesions_csv = synthetic_root / "lesions.csv"
    args = ["explain", "--model", str(vit_dir), "--data", str(prepared_dir), "--num-images", "0"]
    assert main([*args, "--lesions", str(lesions_csv), "--output", str(tmp_path / "out")]) == 0
    rows, raw = frontal_validation(prepared_dir)
    lesions = read_lesions(lesions_csv)
    with_boxes = 0
    for (size, titles, kwargs, layout), path, labels in zip(drawn, rows["path"], raw, strict=True):
        positives = [label for label, value in zip(COMPETITION_LABELS, labels, strict=True) if value == 1]
        assert kwargs["header"].startswith("ground truth: ") and all(label in kwargs["header"] for label in positives)
        assert [title.split("\n")[0] for title in titles] == list(COMPETITION_LABELS)  # label, then its probability
        assert all("\np = " in title for title in titles) and layout.colourbar is not None
        key = path.split("/", 1)[1].lower()
        original = Image.open(synthetic_root.parent / path).size
        scale = size[0] / original[0]
        for panel, label in enumerate(COMPETITION_LABELS, start=1):  # each overlay: its label's boxes, scaled
            expected = [(b.x0 * scale, b.y0 * scale, b.x1 * scale, b.y1 * scale) for b in lesions.for_image(key, label)]
            np.testing.assert_allclose(np.reshape(kwargs["boxes"][panel], (-1, 4)), np.reshape(expected, (-1, 4)))
            assert len(layout.boxes[panel]) == len(expected)
        with_boxes += bool(kwargs["boxes"][0])
        assert len(kwargs["boxes"][0]) == sum(len(kwargs["boxes"][panel]) for panel in range(1, 6))
    assert with_boxes, "some validation images have lesion boxes"


def test_heatmaps_are_float16_and_at_most_map_size_pixels_unless_full_size(vit_dir, synthetic_root, tmp_path):
    images = sorted((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg"))[:2]  # 320 x 390 files
    args = ["explain", "--model", str(vit_dir), "--images", *map(str, images), "--labels", "Edema,Cardiomegaly"]
    assert main([*args, "--map-size", "100", "--output", str(tmp_path / "small")]) == 0
    assert main([*args, "--full-size", "--output", str(tmp_path / "full")]) == 0
    with np.load(tmp_path / "small" / "heatmaps.npz") as small, np.load(tmp_path / "full" / "heatmaps.npz") as full:
        assert len(small.files) == len(full.files) == 4
        for key in small.files:
            assert small[key].dtype == full[key].dtype == np.float16
            assert small[key].shape == (100, 82) and full[key].shape == (390, 320)  # long side 100, aspect kept
            assert small[key].min() >= 0.0 and small[key].max() <= 1.0
    uncompressed = 4 * 100 * 82 * 2
    assert (tmp_path / "small" / "heatmaps.npz").stat().st_size < uncompressed + 4 * 400  # headers: a few hundred


def test_overlays_sheets_or_none_draw_less_and_score_the_same(vit_dir, synthetic_root, tmp_path):
    images = sorted((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg"))[:3]
    args = ["explain", "--model", str(vit_dir), "--images", *map(str, images), "--labels", "Edema,Cardiomegaly"]
    args += ["--lesions", str(synthetic_root / "lesions.csv")]
    written = {}
    for choice in ("all", "sheets", "none"):
        assert main([*args, "--overlays", choice, "--output", str(tmp_path / choice)]) == 0
        written[choice] = sorted(path.name for path in (tmp_path / choice).iterdir())
        with np.load(tmp_path / choice / "heatmaps.npz") as archive:
            maps = {key: archive[key] for key in archive.files}
        if choice == "all":
            reference, scores = maps, json.loads((tmp_path / choice / "localization.json").read_text())
        assert maps.keys() == reference.keys() and all(np.array_equal(maps[k], reference[k]) for k in maps)
        assert json.loads((tmp_path / choice / "localization.json").read_text()) == scores
    sheets = [name for name in written["all"] if name.endswith("__sheet.png")]
    assert len(sheets) == 3 and len([name for name in written["all"] if name.endswith(".png")]) == 3 + 6
    assert written["sheets"] == sorted([*sheets, "heatmaps.npz", "localization.json"])
    assert written["none"] == ["heatmaps.npz", "localization.json"]


def test_faithfulness_and_attention_relevance_through_the_command(vit_dir, synthetic_root, tmp_path, capsys):
    images = sorted((synthetic_root / "valid").glob("patient*/study1/view1_frontal.jpg"))[:3]
    args = ["explain", "--model", str(vit_dir), "--images", *map(str, images), "--labels", "Edema,Cardiomegaly"]
    methods = "gradcam,attention_relevance"
    assert main([*args, "--method", methods, "--road-images", "2", "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    localization = json.loads((tmp_path / "out" / "localization.json").read_text())
    for method in ("gradcam", "attention_relevance"):
        faithfulness = localization["methods"][method]["faithfulness"]
        assert faithfulness["images"] == 2 and set(faithfulness["per_label"]) == {"Edema", "Cardiomegaly"}
        for entry in faithfulness["per_label"].values():
            assert entry["images"] == 2
            assert entry["combined"] == pytest.approx(
                (entry["least_relevant_first"] - entry["most_relevant_first"]) / 2
            )
    assert printed.count("faithfulness on 2 image(s)") == 2 and "MoRF" in printed
    with np.load(tmp_path / "out" / "attention_relevance" / "heatmaps.npz") as maps:
        edema, cardiomegaly = (
            maps[f"{images[0].parts[-3]}_study1_view1_frontal/{label}"] for label in COMPETITION_LABELS[1:4:2]
        )
        assert not np.array_equal(edema, cardiomegaly)  # label-specific, unlike attention rollout


def test_several_models_are_each_explained_and_summarised_as_mean_and_std(
    vit_dir, prepared_dir, synthetic_root, tmp_path, capsys
):
    other = tmp_path / "other" / "model"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        built = tiny_model("vit")
    built.model.save_pretrained(other)
    built.processor.save_pretrained(other)
    lesions = ["--lesions", str(synthetic_root / "lesions.csv"), "--method", "gradcam,attention_relevance"]
    base = ["explain", "--data", str(prepared_dir), "--num-images", "0", *lesions]
    assert main([*base, "--model", str(vit_dir), "--model", str(other), "--output", str(tmp_path / "both")]) == 0
    printed = capsys.readouterr().out
    assert main([*base, "--model", str(vit_dir), "--output", str(tmp_path / "first")]) == 0
    assert main([*base, "--model", str(other), "--output", str(tmp_path / "second")]) == 0
    alone = [json.loads((tmp_path / name / "localization.json").read_text()) for name in ("first", "second")]
    # each model's output is what it writes alone (its folder named after the model, made unique)
    assert sorted(path.name for path in (tmp_path / "both").iterdir()) == ["localization.json", "model", "model-2"]
    for name, single in zip(("model", "model-2"), alone, strict=True):
        within = json.loads((tmp_path / "both" / name / "localization.json").read_text())
        assert within["methods"] == single["methods"]
    summary = json.loads((tmp_path / "both" / "localization.json").read_text())
    assert summary["models"] == ["model", "model-2"]
    for method in ("gradcam", "attention_relevance"):
        for label, entry in summary["methods"][method]["per_label"].items():
            values = [result["methods"][method]["per_label"][label]["hit_rate"] for result in alone]
            assert entry["hit_rate"]["values"] == values
            assert entry["hit_rate"]["mean"] == pytest.approx(np.mean(values))
            assert entry["hit_rate"]["std"] == pytest.approx(np.std(values, ddof=1))
        wrong = [result["methods"][method]["label_specificity"]["wrong_label_hit_rate"] for result in alone]
        assert summary["methods"][method]["overall"]["wrong_label_hit_rate"]["mean"] == pytest.approx(np.mean(wrong))
    assert "over 2 models: model, model-2 (mean ± std)" in printed and "±" in printed
