import pytest

from chexpert_hf.data import frontal_only, load_prepared, patient_split


def test_patient_split_is_disjoint_complete_and_seeded(prepared_dir):
    train = load_prepared(prepared_dir)["train"]
    kept, held = patient_split(train, 0.25, seed=0)
    assert not set(kept["patient_id"]) & set(held["patient_id"])
    assert len(kept) + len(held) == len(train)
    assert sorted(kept["path"][:] + held["path"][:]) == sorted(train["path"][:])
    patients = set(train["patient_id"])
    assert len(set(held["patient_id"])) == round(0.25 * len(patients))
    again, _ = patient_split(train, 0.25, seed=0)
    other, _ = patient_split(train, 0.25, seed=1)
    assert again["path"] == kept["path"]
    assert other["path"] != kept["path"]


def test_patient_split_rejects_bad_fractions(prepared_dir):
    train = load_prepared(prepared_dir)["train"]
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="between 0 and 1"):
            patient_split(train, fraction)
    with pytest.raises(ValueError, match="at least 2 patients"):
        patient_split(train.filter(lambda row: row["patient_id"] == train[0]["patient_id"]), 0.5)


def test_frontal_only(prepared_dir):
    train = load_prepared(prepared_dir)["train"]
    frontal = frontal_only(train)
    assert set(frontal["view"]) == {"frontal"}
    assert len(frontal) == train["view"].count("frontal") < len(train)
