"""Peer check of the CSV parser on CheXpert's real train.csv, which torchxrayvision ships inside its package."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torchxrayvision as xrv

from chexpert_hf.data.chexpert_csv import read_image_csv
from chexpert_hf.labels import CHEXPERT_LABELS

REAL_TRAIN_CSV = Path(xrv.datasets.datapath) / "chexpert_train.csv.gz"


@pytest.fixture(scope="module")
def records():
    return read_image_csv(REAL_TRAIN_CSV, "/data/CheXpert-v1.0-small")


def test_real_train_csv_counts(records):
    assert len(records) == 223_414
    assert len({r.patient_id for r in records}) == 64_540
    assert len({r.study_id for r in records}) == 187_641
    assert sum(r.view == "frontal" for r in records) == 191_027
    assert sum(r.view == "lateral" for r in records) == 32_387
    assert Counter(r.ap_pa for r in records) == {"AP": 161_590, "PA": 29_420, "": 32_387, "LL": 16, "RL": 1}
    assert sum(r.sex == "Unknown" for r in records) == 1 and sum(r.age == 0 for r in records) == 3
    assert sum(all(np.isnan(v) for v in r.labels) for r in records) == 12
    assert records[0].file == "/data/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"


def test_labels_agree_with_torchxrayvision(records):
    peer = xrv.datasets.CheX_Dataset(imgpath="/unused", csvpath=str(REAL_TRAIN_CSV), views=["*"], unique_patients=False)
    assert len(peer) == len(records)
    assert peer.csv["Path"].tolist() == [r.path for r in records]

    # Map our raw labels onto torchxrayvision's conventions: its 13 pathologies in alphabetical order with
    # "Pleural Effusion" renamed "Effusion", uncertain (-1) as NaN, and every pathology but Support Devices
    # set to 0 when "No Finding" is 1.
    ours = np.array([r.labels for r in records], dtype=np.float32)
    healthy = ours[:, CHEXPERT_LABELS.index("No Finding")] == 1
    for column, name in enumerate(CHEXPERT_LABELS):
        if name not in ("No Finding", "Support Devices"):
            ours[healthy, column] = 0
    ours[ours == -1] = np.nan
    renamed = {"Effusion": "Pleural Effusion"}
    columns = [CHEXPERT_LABELS.index(renamed.get(str(name), str(name))) for name in peer.pathologies]
    ours = ours[:, columns]

    np.testing.assert_array_equal(np.isnan(ours), np.isnan(peer.labels))
    np.testing.assert_array_equal(np.nan_to_num(ours, nan=7), np.nan_to_num(peer.labels, nan=7))
    assert np.nansum(peer.labels == 1) > 100_000  # the comparison covered real positives
