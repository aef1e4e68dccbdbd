"""Per-subgroup scoring: grouping of studies and images, the too-small rule, AUROC against scikit-learn and ``score``,
the false-negative rate at a threshold, worst group and gap, and the written files."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from chexpert_hf.evaluation.metrics import aggregate_studies, score
from chexpert_hf.evaluation.subgroups import (
    AGE_BANDS,
    ATTRIBUTES,
    MIN_CLASS,
    ImageMeta,
    age_band,
    image_groups,
    study_groups,
    subgroup_scores,
    subgroups_figure,
    subgroups_markdown,
    subgroups_text,
    write_subgroups,
)
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS
from chexpert_hf.outputs import SUBGROUPS_JSON, SUBGROUPS_MD, SUBGROUPS_PNG

nan = np.nan
ATELECTASIS, CARDIOMEGALY = "Atelectasis", "Cardiomegaly"


def test_constants():
    assert ATTRIBUTES == ("sex", "age", "view")
    assert [name for _, _, name in AGE_BANDS] == ["0–39", "40–59", "60–79", "80+"]
    assert MIN_CLASS == 10


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "0–39"),
        (39, "0–39"),
        (40, "40–59"),
        (59, "40–59"),
        (60, "60–79"),
        (79, "60–79"),
        (80, "80+"),
        (104, "80+"),
        (np.int32(45), "40–59"),
        (None, None),
        (nan, None),
        (-1, None),
    ],
)
def test_age_band_edges(age, band):
    assert age_band(age) == band


# --- grouping -----------------------------------------------------------------------------------------------------

# (study, sex, age, view, ap_pa) per image; studies interleaved so that first appearance differs from sorted order
IMAGES = [
    ("s3", "", None, "frontal", "AP"),  # s3: AP and PA frontal -> mixed; blank sex, no age -> unassigned
    ("s1", "Male", 39, "frontal", "AP"),  # s1: AP frontal + lateral -> AP; sex and age from this first image
    ("s3", "Male", 70, "frontal", "PA"),
    ("s2", "Female", 40, "Frontal", "pa"),  # s2: CSV casing -> PA
    ("s1", "Female", 80, "lateral", "LL"),
    ("s5", "Unknown", 59, "lateral", ""),  # s5: lateral only -> None; Unknown sex -> unassigned
    ("s4", "Female", 60, "lateral", "LL"),  # s4: LL/RL laterals only -> None
    ("s4", "Female", 60, "lateral", "RL"),
    ("s6", "Male", 80, "frontal", "LL"),  # s6: a frontal image without AP/PA -> None
    ("s5", "Unknown", 59, "lateral", ""),
]


def images_meta():
    ids = np.array([image[0] for image in IMAGES])
    meta = ImageMeta(
        sex=[image[1] for image in IMAGES],
        age=[image[2] for image in IMAGES],
        view=[image[3] for image in IMAGES],
        ap_pa=[image[4] for image in IMAGES],
    )
    return ids, meta


def test_study_groups_sex_age_view_per_study_in_order_of_first_appearance():
    ids, meta = images_meta()
    studies, groups = study_groups(ids, meta)
    assert studies.tolist() == ["s3", "s1", "s2", "s5", "s4", "s6"]
    assert set(groups) == set(ATTRIBUTES)
    assert groups["sex"].tolist() == [None, "Male", "Female", None, "Female", "Male"]
    assert groups["age"].tolist() == [None, "0–39", "40–59", "40–59", "60–79", "80+"]
    assert groups["view"].tolist() == ["mixed", "AP", "PA", None, None, None]
    assert all(isinstance(value, np.ndarray) and value.dtype == object for value in groups.values())


def test_study_groups_follow_aggregate_studies_order():
    ids, meta = images_meta()
    rng = np.random.default_rng(1)
    _, _, aggregated_ids = aggregate_studies(rng.random((len(ids), 2)), np.zeros((len(ids), 2)), ids)
    studies, _ = study_groups(ids, meta, attributes=("view",))
    assert studies.tolist() == aggregated_ids.tolist()


def test_study_groups_subset_of_attributes_and_bad_input():
    ids, meta = images_meta()
    _, groups = study_groups(ids, meta, attributes=("age",))
    assert list(groups) == ["age"]
    with pytest.raises(ValueError, match="unknown attribute"):
        study_groups(ids, meta, attributes=("race",))
    with pytest.raises(ValueError, match="one id per image"):
        study_groups(ids[:-1], meta)


def test_image_groups_each_image_its_own():
    _, meta = images_meta()
    groups = image_groups(meta)
    assert groups["view"].tolist() == ["AP", "AP", "PA", "PA", None, None, None, None, None, None]
    assert groups["sex"].tolist()[:5] == [None, "Male", "Male", "Female", "Female"]
    assert groups["age"].tolist()[:5] == [None, "0–39", "60–79", "40–59", "80+"]


# --- scoring ------------------------------------------------------------------------------------------------------


def random_case(rows: int, labels=CHEXPERT_LABELS, seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((rows, len(labels))) < 0.35).astype(np.float64)
    scores = 0.4 * targets + 0.6 * rng.random(targets.shape)
    targets[rng.random(targets.shape) < 0.05] = nan
    return scores, targets


def test_group_auroc_equals_sklearn_and_interval_equals_score_on_the_groups_rows():
    labels = list(reversed(CHEXPERT_LABELS))  # another column order: columns are found by name
    scores, targets = random_case(300, labels, seed=3)
    rng = np.random.default_rng(4)
    sex = rng.choice(np.array(["Female", "Male", None], dtype=object), size=300, p=[0.45, 0.45, 0.1])
    result = subgroup_scores(scores, targets, labels, {"sex": sex}, n_bootstrap=80, seed=5)
    assert result["labels"] == list(COMPETITION_LABELS)  # only the competition labels are scored
    assert result["thresholds"] is False
    groups = result["attributes"]["sex"]["groups"]
    assert list(groups) == ["Female", "Male"]
    for group, entry in groups.items():
        rows = np.flatnonzero(sex == group)
        assert entry["n"] == len(rows)
        reference = score(scores[rows], targets[rows], labels, n_bootstrap=80, seed=5)
        for label in COMPETITION_LABELS:
            column = labels.index(label)
            kept = ~np.isnan(targets[rows, column])
            truth, predicted = targets[rows, column][kept], scores[rows, column][kept]
            item = entry["per_label"][label]
            assert "too_small" not in item
            assert item["positives"] == int(truth.sum()) and item["negatives"] == int((truth == 0).sum())
            assert item["auroc"] == pytest.approx(roc_auc_score(truth, predicted), abs=1e-12)
            assert item["auroc_ci95"] == reference["per_label"][label]["auroc_ci95"]
            assert "false_negative_rate" not in item
        aurocs = [entry["per_label"][label]["auroc"] for label in COMPETITION_LABELS]
        assert entry["mean_auroc"] == pytest.approx(np.mean(aurocs))
        assert entry["mean_covers"] == len(COMPETITION_LABELS)


def counted_case(positives: int, negatives: int, seed: int = 0):
    """One column's scores and targets with exactly these class counts."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.ones(positives), np.zeros(negatives)]
    return 0.3 * truth + 0.7 * rng.random(len(truth)), truth


def test_too_small_rule_nine_positives_too_small_ten_scored_per_label():
    # group "a": Atelectasis 9 positives (too small), Cardiomegaly 10 (scored); group "b": 10 and 9 negatives
    a_atelectasis = counted_case(9, 21, seed=1)
    a_cardiomegaly = counted_case(10, 20, seed=2)
    b_atelectasis = counted_case(10, 20, seed=3)
    b_cardiomegaly = counted_case(21, 9, seed=4)
    scores = np.r_[np.c_[a_atelectasis[0], a_cardiomegaly[0]], np.c_[b_atelectasis[0], b_cardiomegaly[0]]]
    targets = np.r_[np.c_[a_atelectasis[1], a_cardiomegaly[1]], np.c_[b_atelectasis[1], b_cardiomegaly[1]]]
    groups = {"sex": np.array(["a"] * 30 + ["b"] * 30, dtype=object)}
    result = subgroup_scores(scores, targets, [ATELECTASIS, CARDIOMEGALY], groups, n_bootstrap=20)
    a, b = (result["attributes"]["sex"]["groups"][name]["per_label"] for name in ("a", "b"))
    assert a[ATELECTASIS] == {"positives": 9, "negatives": 21, "too_small": True}
    assert a[CARDIOMEGALY]["positives"] == 10 and "auroc" in a[CARDIOMEGALY] and "too_small" not in a[CARDIOMEGALY]
    assert b[ATELECTASIS]["positives"] == 10 and "auroc" in b[ATELECTASIS]
    assert b[CARDIOMEGALY] == {"positives": 21, "negatives": 9, "too_small": True}
    assert result["attributes"]["sex"]["groups"]["a"]["mean_covers"] == 1
    assert result["attributes"]["sex"]["groups"]["a"]["mean_auroc"] == pytest.approx(a[CARDIOMEGALY]["auroc"])
    # each label was scored on one group only: no worst group, no gap
    assert result["attributes"]["sex"]["worst"] == {} and result["attributes"]["sex"]["gap"] == {}
    markdown = subgroups_markdown(result, "Subgroups")
    assert "too small (9 pos / 21 neg)" in markdown and "too small (21 pos / 9 neg)" in markdown


def test_false_negative_rate_at_threshold_on_a_hand_case():
    # 10 positives: 4 below 0.5, one exactly at 0.5 (called positive: score >= threshold), 5 above -> FNR 4/10
    positives = np.array([0.1, 0.2, 0.3, 0.49, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    negatives = np.linspace(0.0, 0.7, 12)
    scores = np.r_[positives, negatives][:, None]
    targets = np.r_[np.ones(10), np.zeros(12)][:, None]
    groups = {"view": np.array(["AP"] * 22, dtype=object)}
    result = subgroup_scores(scores, targets, [ATELECTASIS], groups, thresholds={ATELECTASIS: 0.5}, n_bootstrap=10)
    item = result["attributes"]["view"]["groups"]["AP"]["per_label"][ATELECTASIS]
    assert result["thresholds"] is True
    assert item["false_negative_rate"] == pytest.approx(0.4)
    low, high = proportion_confint(6, 10, alpha=0.05, method="wilson")  # sensitivity 6/10
    assert item["false_negative_rate_ci95"] == pytest.approx([1 - high, 1 - low])
    assert item["false_negative_rate_ci95"][0] < 0.4 < item["false_negative_rate_ci95"][1]
    # a label without a threshold gets none
    result = subgroup_scores(scores, targets, [ATELECTASIS], groups, thresholds={}, n_bootstrap=10)
    assert result["attributes"]["view"]["groups"]["AP"]["per_label"][ATELECTASIS]["false_negative_rate"] is None


def test_worst_group_and_gap_on_a_hand_case():
    rng = np.random.default_rng(7)
    truth = np.r_[np.ones(15), np.zeros(25)]
    good = 0.5 * truth + 0.4 * rng.random(40)  # perfectly separated: AUROC 1
    poor = 0.1 * truth + 0.9 * rng.random(40)  # barely better than chance
    middling = 0.3 * truth + 0.7 * rng.random(40)
    scores = np.r_[good, poor, middling][:, None]
    targets = np.r_[truth, truth, truth][:, None]
    age = np.array(["40–59"] * 40 + ["80+"] * 40 + ["0–39"] * 40, dtype=object)
    result = subgroup_scores(scores, targets, [ATELECTASIS], {"age": age}, n_bootstrap=20)
    entry = result["attributes"]["age"]
    assert list(entry["groups"]) == ["0–39", "40–59", "80+"]  # band order, not row order
    poor_auroc = roc_auc_score(truth, poor)
    assert roc_auc_score(truth, good) == 1.0 and poor_auroc < roc_auc_score(truth, middling)
    assert entry["worst"] == {ATELECTASIS: "80+"}
    assert entry["gap"][ATELECTASIS] == pytest.approx(1.0 - poor_auroc)
    assert "worst 80+" in subgroups_markdown(result, "t")
    assert f"{ATELECTASIS} ({poor_auroc:.3f})" in subgroups_text(result)


def test_group_order_sex_alphabetical_view_ap_pa_mixed():
    scores, targets = random_case(90, [ATELECTASIS], seed=2)
    sex = np.array(["Male", "Female", "Other"] * 30, dtype=object)
    view = np.array(["mixed", "PA", "AP"] * 30, dtype=object)
    result = subgroup_scores(scores, targets, [ATELECTASIS], {"view": view, "sex": sex}, n_bootstrap=0)
    assert list(result["attributes"]) == ["view", "sex"]
    assert list(result["attributes"]["view"]["groups"]) == ["AP", "PA", "mixed"]
    assert list(result["attributes"]["sex"]["groups"]) == ["Female", "Male", "Other"]


def test_unassigned_count_and_only_assigned_rows_in_groups():
    scores, targets = random_case(50, [ATELECTASIS, "Edema"], seed=6)
    sex = np.array(["Female"] * 20 + [None] * 7 + [""] * 3 + ["Male"] * 20, dtype=object)
    result = subgroup_scores(scores, targets, [ATELECTASIS, "Edema"], {"sex": sex}, n_bootstrap=0)
    entry = result["attributes"]["sex"]
    assert entry["unassigned"] == 10
    assert {group: item["n"] for group, item in entry["groups"].items()} == {"Female": 20, "Male": 20}
    with pytest.raises(ValueError, match="one per row"):
        subgroup_scores(scores, targets, [ATELECTASIS, "Edema"], {"sex": sex[:-1]})


def test_study_level_end_to_end_rows_match_aggregate_studies():
    rng = np.random.default_rng(11)
    images = 400
    ids = np.array([f"p{index // 2:03d}/study1" for index in rng.permutation(images)])
    meta = ImageMeta(
        sex=list(rng.choice(["Male", "Female", ""], size=images)),
        age=[int(age) for age in rng.integers(18, 95, size=images)],
        view=["frontal" if index % 2 else "lateral" for index in range(images)],
        ap_pa=list(rng.choice(["AP", "PA"], size=images)),
    )
    scores, targets = random_case(images, COMPETITION_LABELS, seed=12)
    study_scores, study_targets, aggregated = aggregate_studies(scores, targets, ids)
    studies, groups = study_groups(ids, meta)
    assert studies.tolist() == aggregated.tolist()
    result = subgroup_scores(study_scores, study_targets, COMPETITION_LABELS, groups, n_bootstrap=20)
    for attribute in ATTRIBUTES:
        entry = result["attributes"][attribute]
        assert sum(item["n"] for item in entry["groups"].values()) + entry["unassigned"] == len(studies)
    assert result["unit"] == "study"


# --- files --------------------------------------------------------------------------------------------------------


def test_write_subgroups_writes_three_files_and_json_has_null_for_nan(tmp_path):
    scores, targets = random_case(120, COMPETITION_LABELS, seed=8)
    sex = np.array(["Female"] * 100 + ["Male"] * 20, dtype=object)  # "Male": too small for every label
    thresholds = dict.fromkeys(COMPETITION_LABELS, 0.5)
    result = subgroup_scores(scores, targets, COMPETITION_LABELS, {"sex": sex}, thresholds=thresholds, n_bootstrap=30)
    assert math.isnan(result["attributes"]["sex"]["groups"]["Male"]["mean_auroc"])
    paths = write_subgroups(tmp_path / "out", result, "Subgroups of a test")
    assert set(paths) == {SUBGROUPS_JSON, SUBGROUPS_MD, SUBGROUPS_PNG}
    assert all(path.is_file() and path.parent == tmp_path / "out" for path in paths.values())
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind
    text = paths[SUBGROUPS_JSON].read_text(encoding="utf-8")
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["attributes"]["sex"]["groups"]["Male"]["mean_auroc"] is None
    assert loaded["attributes"]["sex"]["groups"]["Male"]["mean_covers"] == 0
    female = loaded["attributes"]["sex"]["groups"]["Female"]["per_label"][ATELECTASIS]
    assert female["auroc"] == pytest.approx(
        result["attributes"]["sex"]["groups"]["Female"]["per_label"][ATELECTASIS]["auroc"]
    )
    assert 0.0 <= female["false_negative_rate"] <= 1.0
    markdown = paths[SUBGROUPS_MD].read_text(encoding="utf-8")
    assert markdown.startswith("# Subgroups of a test\n")
    assert f"![Subgroups]({SUBGROUPS_PNG})" in markdown
    assert f"{ATELECTASIS} FNR" in markdown and "under-diagnosis" in markdown
    assert paths[SUBGROUPS_PNG].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_has_one_panel_per_scored_label():
    scores, targets = random_case(200, [ATELECTASIS, "Edema", "Fracture"], seed=9)
    age = np.array(["40–59", "60–79"] * 100, dtype=object)
    result = subgroup_scores(scores, targets, [ATELECTASIS, "Edema", "Fracture"], {"age": age}, n_bootstrap=10)
    assert result["labels"] == [ATELECTASIS, "Edema"]  # Fracture is not a competition label
    figure = subgroups_figure(result)
    assert len(figure.axes) == 2
    assert [tick.get_text() for tick in figure.axes[0].get_yticklabels()] == ["age: 40–59", "age: 60–79"]


def test_the_shared_axis_shows_every_panels_points_and_intervals():
    rng = np.random.default_rng(4)
    targets = (rng.random((400, 2)) < 0.4).astype(float)
    scores = np.column_stack([targets[:, 0] + 0.1 * rng.random(400), rng.random(400)])  # ~1.0 and ~0.5
    result = subgroup_scores(
        scores, targets, [ATELECTASIS, "Edema"], {"sex": np.array(["F", "M"] * 200)}, n_bootstrap=50
    )
    lows = [
        group["per_label"][label]["auroc_ci95"][0]
        for group in result["attributes"]["sex"]["groups"].values()
        for label in (ATELECTASIS, "Edema")
    ]
    left, right = subgroups_figure(result).axes[1].get_xlim()
    assert left < min(lows) < 0.7 and right >= 1.0
