import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from chexpert_hf.data import synthetic
from chexpert_hf.data.synthetic import (
    HEIGHT,
    LESION_HEADER,
    STUDY_LABEL_RATES,
    TRAIN_HEADER,
    WIDTH,
    sample_expert_labels,
    sample_train_labels,
    synthesize,
)
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS


def test_layout_and_header(synthetic_root):
    assert synthetic_root.name == "CheXpert-v1.0-small"
    for name in ("train.csv", "valid.csv", "lesions.csv", "groundtruth.csv", "train", "valid", "test"):
        assert (synthetic_root / name).exists(), name
    train = pd.read_csv(synthetic_root / "train.csv", dtype=str, keep_default_na=False)
    assert tuple(train.columns) == TRAIN_HEADER
    pattern = r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg"
    assert train["Path"].str.fullmatch(pattern).all()
    for path in train["Path"]:
        assert (synthetic_root.parent / path).is_file()
    assert set(train["Frontal/Lateral"]) == {"Frontal", "Lateral"}
    assert (train.loc[train["Frontal/Lateral"] == "Lateral", "AP/PA"] == "").all()
    labels = train[list(CHEXPERT_LABELS)]
    assert set(np.unique(labels.to_numpy())) == {"", "0.0", "1.0", "-1.0"}
    assert train.groupby(train["Path"].str.split("/").str[2])["Path"].count().max() > 1  # several images per patient
    valid = pd.read_csv(synthetic_root / "valid.csv")
    assert set(np.unique(valid[list(CHEXPERT_LABELS)].to_numpy())) <= {0.0, 1.0}  # expert labels: 0/1 only
    truth = pd.read_csv(synthetic_root / "groundtruth.csv")
    assert list(truth.columns) == ["Study", *CHEXPERT_LABELS]
    assert truth["Study"].str.match(r"test/patient\d+/study1$").all()
    patients = [set(frame["Path"].str.split("/").str[2]) for frame in (train, valid)]
    assert not patients[0] & patients[1]


def test_images_have_chexpert_small_geometry(synthetic_root):
    image = Image.open(next((synthetic_root / "train").glob("*/*/view1_frontal.jpg")))
    assert image.format == "JPEG" and image.mode == "L" and image.size == (WIDTH, HEIGHT)


def test_lesion_boxes_lie_on_frontal_images(synthetic_root):
    lesions = pd.read_csv(synthetic_root / "lesions.csv")
    assert tuple(lesions.columns) == LESION_HEADER and len(lesions) > 0
    assert set(lesions["label"]) <= set(CHEXPERT_LABELS)
    assert ((lesions.x0 >= 0) & (lesions.y0 >= 0) & (lesions.x1 < WIDTH) & (lesions.y1 < HEIGHT)).all()
    assert ((lesions.x1 > lesions.x0) & (lesions.y1 > lesions.y0)).all()
    rows = pd.concat([pd.read_csv(synthetic_root / f"{split}.csv") for split in ("train", "valid")]).set_index("Path")
    for _, lesion in lesions.iterrows():
        if lesion.path.startswith("CheXpert-v1.0-small/test/"):
            continue
        row = rows.loc[lesion.path]
        assert row["Frontal/Lateral"] == "Frontal"
        assert row[lesion.label] in (1.0, -1.0)  # only drawn findings have boxes


def _tree(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_deterministic_in_seed_and_independent_of_workers(tmp_path):
    one = synthesize(tmp_path / "a", 6, valid_patients=2, test_patients=2, seed=3, progress=False).root
    two = synthesize(tmp_path / "b", 6, valid_patients=2, test_patients=2, seed=3, num_proc=2, progress=False).root
    other = synthesize(tmp_path / "c", 6, valid_patients=2, test_patients=2, seed=4, progress=False).root
    assert _tree(one) == _tree(two)  # every image and CSV, test/ and groundtruth.csv included
    image = "train/patient00001/study1/view1_frontal.jpg"
    assert (one / image).read_bytes() != (other / image).read_bytes()
    assert (one / "train.csv").read_bytes() != (other / "train.csv").read_bytes()


def test_validation_content_does_not_depend_on_the_training_size(tmp_path):
    small = synthesize(tmp_path / "small", 5, valid_patients=3, seed=2, progress=False).root
    large = synthesize(tmp_path / "large", 9, valid_patients=3, seed=2, progress=False).root
    frames = [pd.read_csv(root / "valid.csv") for root in (small, large)]
    labels = [frame[list(CHEXPERT_LABELS)].to_numpy() for frame in frames]
    np.testing.assert_array_equal(*labels)
    for path_small, path_large in zip(frames[0]["Path"], frames[1]["Path"], strict=True):
        assert path_small != path_large  # patients are numbered after the training ones ...
        assert (small.parent / path_small).read_bytes() == (large.parent / path_large).read_bytes()  # ... same images


def test_existing_tree_is_not_replaced_without_overwrite(tmp_path):
    synthesize(tmp_path, 2, valid_patients=1, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        synthesize(tmp_path, 2, valid_patients=1, progress=False)
    assert synthesize(tmp_path, 3, valid_patients=1, overwrite=True, progress=False).patients["train"] == 3
    assert not list(tmp_path.glob(".CheXpert-v1.0-small.tmp-*"))


def test_label_rates_match_real_chexpert():
    rng = np.random.default_rng(0)
    draws = np.array([list(sample_train_labels(rng).values()) for _ in range(20_000)])
    for column, name in enumerate(CHEXPERT_LABELS):
        positive, negative, uncertain = STUDY_LABEL_RATES[name]
        values = draws[:, column]
        assert abs(np.mean(values == 1) - positive) < 0.015, name
        assert abs(np.mean(values == -1) - uncertain) < 0.015, name
        assert abs(np.mean(values == 0) - negative) < 0.015, name
    pathologies = [i for i, name in enumerate(CHEXPERT_LABELS) if name not in ("No Finding", "Support Devices")]
    healthy = draws[:, 0] == 1
    assert not np.isin(draws[healthy][:, pathologies], (1, -1)).any()  # "No Finding" means no pathology
    assert set(np.unique(draws[~np.isnan(draws)])) == {-1.0, 0.0, 1.0}


def test_expert_labels_are_binary_and_consistent():
    rng = np.random.default_rng(0)
    for _ in range(500):
        labels = sample_expert_labels(rng)
        assert set(labels.values()) <= {0.0, 1.0}
        others = [labels[name] for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices")]
        assert labels["No Finding"] == float(not any(others))


def _render(labels: dict[str, float]) -> np.ndarray:
    """One frontal image of a fixed patient with the given labels (same random draws for every call)."""
    rng = np.random.default_rng(11)
    thorax = synthetic._sample_thorax(rng)
    anatomy = synthetic._frontal_anatomy(thorax, rng)
    canvas = synthetic._draw_frontal_findings(labels, thorax, np.random.default_rng(5))
    return np.asarray(synthetic._compose(anatomy, canvas, np.random.default_rng(6)), dtype=np.float32), canvas


@pytest.mark.parametrize("finding", ["Pleural Effusion", "Consolidation", "Lung Lesion", "Atelectasis", "Edema"])
def test_findings_brighten_their_box_and_uncertain_ones_less(finding):
    none = {name: math.nan for name in CHEXPERT_LABELS}
    baseline, _ = _render(none)
    positive, canvas = _render({**none, finding: 1.0})
    uncertain, _ = _render({**none, finding: -1.0})
    mask = np.zeros_like(baseline, dtype=bool)
    for label, (x0, y0, x1, y1) in canvas.lesions:
        assert label == finding
        mask[y0:y1, x0:x1] = True
    gain_positive = (positive - baseline)[mask].mean()
    gain_uncertain = (uncertain - baseline)[mask].mean()
    assert gain_positive > 15
    assert 2 < gain_uncertain < 0.8 * gain_positive
    assert abs((positive - baseline)[~mask].mean()) < 0.2 * gain_positive  # local, not a global shift


def test_competition_findings_are_learnable_at_low_resolution(tmp_path):
    """A linear model on 32x39 thumbnails separates the competition labels: the signatures survive downscaling."""
    root = synthesize(tmp_path, 250, valid_patients=150, seed=1, progress=False).root

    def load(split):
        frame = pd.read_csv(root / f"{split}.csv")
        frame = frame[frame["Frontal/Lateral"] == "Frontal"]
        pixels = [
            np.asarray(Image.open(root.parent / p).resize((32, 39), Image.BILINEAR), np.float32).ravel() / 255
            for p in frame["Path"]
        ]
        return frame, np.stack(pixels)

    (train, x_train), (valid, x_valid) = load("train"), load("valid")
    aurocs = {}
    for label in COMPETITION_LABELS:
        model = LogisticRegression(C=0.05, max_iter=3000).fit(x_train, (train[label] == 1).astype(int))
        aurocs[label] = roc_auc_score(valid[label], model.predict_proba(x_valid)[:, 1])
    # Consolidation (a small patch anywhere in either lung) is the hardest for a linear model, as on real data.
    assert min(aurocs.values()) > 0.7, aurocs
    assert np.mean(list(aurocs.values())) > 0.85, aurocs


LOCALISED = [name for name in CHEXPERT_LABELS if name != "No Finding"]  # every finding the generator boxes


@pytest.mark.parametrize("seed", [5, 8, 13])
@pytest.mark.parametrize("finding", LOCALISED)
def test_lesion_boxes_cover_everything_the_finding_draws(finding, seed):
    """lesions.csv says where each finding was drawn: no pixel it changes may lie outside its boxes (grown by the
    softening blur), or a map that points at what the model learned is scored as a miss."""
    none = {name: 0.0 for name in CHEXPERT_LABELS}

    def render(labels):
        rng = np.random.default_rng(11)
        thorax = synthetic._sample_thorax(rng)
        anatomy = synthetic._frontal_anatomy(thorax, rng)
        canvas = synthetic._draw_frontal_findings(labels, thorax, np.random.default_rng(seed))
        return np.asarray(synthetic._compose(anatomy, canvas, np.random.default_rng(6)), dtype=np.float32), canvas

    baseline, _ = render(none)
    for state in (1.0, -1.0):
        image, canvas = render({**none, finding: state})
        boxes = [box for label, box in canvas.lesions if label == finding]
        assert boxes and {label for label, _ in canvas.lesions} == {finding}
        inside = np.zeros(baseline.shape, dtype=bool)
        for x0, y0, x1, y1 in boxes:
            inside[max(0, y0 - 8) : y1 + 9, max(0, x0 - 8) : x1 + 9] = True
        changed = np.abs(image - baseline) > 4
        assert changed[inside].sum() > 50  # the finding is drawn at all
        outside = changed & ~inside
        assert outside.sum() <= 0.002 * changed.sum(), (state, outside.sum(), changed.sum(), np.argwhere(outside)[:3])


def test_a_tree_from_an_older_generator_is_made_again(tmp_path, caplog):
    from chexpert_hf.data.loading import synthetic_root

    tree = synthetic_root(tmp_path, 3, 20, 0)
    assert synthetic.generator_revision(tree) == synthetic.GENERATOR_REVISION
    before = (tree / "lesions.csv").read_bytes()
    assert synthetic_root(tmp_path, 3, 20, 0) == tree and (tree / "lesions.csv").read_bytes() == before  # reused
    (tree / synthetic.GENERATOR_FILE).unlink()  # as a tree written before the revision file existed
    (tree / "lesions.csv").write_text("path,label,x0,y0,x1,y1\n")  # its stale boxes
    with caplog.at_level("WARNING"):
        assert synthetic_root(tmp_path, 3, 20, 0) == tree
    assert "older generator" in caplog.text
    assert (tree / "lesions.csv").read_bytes() == before
    assert synthetic.generator_revision(tree) == synthetic.GENERATOR_REVISION
