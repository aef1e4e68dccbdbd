import numpy as np
import pytest

from chexpert_hf.labels import (
    CHEXPERT_LABELS,
    COMPETITION_LABELS,
    UNCERTAINTY_POLICIES,
    apply_uncertainty_policy,
    canonical_label,
    check_label_names,
    reorder_labels,
)

nan = np.nan
# Five studies over the competition labels (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion).
RAW = np.array(
    [
        [-1, 1, 0, -1, nan],
        [1, -1, -1, 0, 1],
        [nan, nan, nan, nan, nan],
        [0, 0, 1, 1, -1],
        [-1, -1, -1, -1, -1],
    ],
    dtype=np.float32,
)

EXPECTED = {  # blank -> negative
    "u_ignore": [[nan, 1, 0, nan, 0], [1, nan, nan, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, nan], [nan] * 5],
    "u_zeros": [[0, 1, 0, 0, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0] * 5],
    "u_ones": [[1, 1, 0, 1, 0], [1, 1, 1, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1], [1] * 5],
    # U-Ones for Atelectasis and Edema, U-Zeros for Cardiomegaly, Consolidation, Pleural Effusion
    "u_mixed": [[1, 1, 0, 1, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 0], [1, 0, 0, 1, 0]],
}


def test_label_tables():
    assert len(CHEXPERT_LABELS) == 14 and len(set(CHEXPERT_LABELS)) == 14
    assert set(COMPETITION_LABELS) <= set(CHEXPERT_LABELS)
    assert CHEXPERT_LABELS[0] == "No Finding" and CHEXPERT_LABELS[-1] == "Support Devices"


@pytest.mark.parametrize("name", ["Pleural_Effusion", "pleural effusion", " Pleural  Effusion ", "PLEURAL_EFFUSION"])
def test_canonical_label_accepts_variants(name):
    assert canonical_label(name) == "Pleural Effusion"


def test_check_label_names_rejects_unknown_and_repeated():
    with pytest.raises(ValueError, match="unknown CheXpert label 'Effusion'.*known labels: No Finding"):
        check_label_names(["Effusion"])
    with pytest.raises(ValueError, match="appears twice"):
        check_label_names(["Edema", "edema"])


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_policies_on_hand_written_matrix(policy):
    result = apply_uncertainty_policy(RAW, COMPETITION_LABELS, policy)
    np.testing.assert_array_equal(result, np.array(EXPECTED[policy], dtype=np.float32))


def test_every_registered_policy_is_tested():
    assert set(UNCERTAINTY_POLICIES) == set(EXPECTED) | {"u_smooth"}


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_policies_follow_names_not_positions(policy):
    order = [3, 0, 4, 2, 1]
    shuffled_names = [COMPETITION_LABELS[i] for i in order]
    result = apply_uncertainty_policy(RAW[:, order], shuffled_names, policy)
    np.testing.assert_array_equal(result, np.array(EXPECTED[policy], dtype=np.float32)[:, order])


def test_u_mixed_on_all_fourteen_labels_in_csv_order():
    raw = np.full((1, 14), -1.0, dtype=np.float32)
    result = apply_uncertainty_policy(raw, CHEXPERT_LABELS, "u_mixed")[0]
    ones = {name for name, value in zip(CHEXPERT_LABELS, result, strict=True) if value == 1}
    assert ones == {"Atelectasis", "Edema"}
    assert np.count_nonzero(result == 0) == 12


def test_blank_can_be_masked():
    result = apply_uncertainty_policy(RAW, COMPETITION_LABELS, "u_zeros", blank="mask")
    assert np.isnan(result[2]).all()
    assert np.isnan(result[0, 4])
    assert result[0, 0] == 0 and result[0, 1] == 1


def test_u_smooth_draws_within_range_and_follows_the_seed():
    raw = np.full((200, 5), -1.0, dtype=np.float32)
    first = apply_uncertainty_policy(
        raw, COMPETITION_LABELS, "u_smooth", smooth_range=(0.55, 0.85), rng=np.random.default_rng(3)
    )
    again = apply_uncertainty_policy(
        raw, COMPETITION_LABELS, "u_smooth", smooth_range=(0.55, 0.85), rng=np.random.default_rng(3)
    )
    assert (first >= 0.55).all() and (first <= 0.85).all()
    assert first.std() > 0.05  # random, not a constant
    np.testing.assert_array_equal(first, again)
    certain = apply_uncertainty_policy(RAW, COMPETITION_LABELS, "u_smooth", rng=np.random.default_rng(0))
    assert certain[1, 0] == 1 and certain[3, 0] == 0  # certain labels are untouched


def test_policy_input_errors():
    with pytest.raises(ValueError, match="unknown uncertainty policy 'u_half'; choose one of u_ignore"):
        apply_uncertainty_policy(RAW, COMPETITION_LABELS, "u_half")
    with pytest.raises(ValueError, match="raw labels must be 1, 0, -1 or NaN; found \\[2.0\\]"):
        apply_uncertainty_policy(np.array([[2, 0, 0, 0, 0]]), COMPETITION_LABELS, "u_ones")
    with pytest.raises(ValueError, match="5 columns but 4 label names"):
        apply_uncertainty_policy(RAW, COMPETITION_LABELS[:4], "u_ones")
    with pytest.raises(ValueError, match="unknown blank policy"):
        apply_uncertainty_policy(RAW, COMPETITION_LABELS, "u_ones", blank="positive")
    with pytest.raises(ValueError, match="smooth_range"):
        apply_uncertainty_policy(RAW, COMPETITION_LABELS, "u_smooth", smooth_range=(0.9, 0.5))


def test_reorder_labels_by_name():
    full = np.arange(14, dtype=np.float32)[None]
    picked = reorder_labels(full, CHEXPERT_LABELS, COMPETITION_LABELS)
    assert picked.tolist() == [[8, 2, 6, 5, 10]]
    with pytest.raises(ValueError, match="not among the available labels"):
        reorder_labels(picked, COMPETITION_LABELS, ["No Finding"])
