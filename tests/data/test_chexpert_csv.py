import math

import pytest
from conftest import image_row, jpeg_bytes, make_tree, write_csv

from chexpert_hf.data.chexpert_csv import (
    CheXpertFormatError,
    find_split_files,
    read_image_csv,
    read_study_csv,
    split_image_path,
)
from chexpert_hf.data.synthetic import TRAIN_HEADER
from chexpert_hf.labels import CHEXPERT_LABELS

LABELS = ["", "0.0", "1.0", "-1.0", "1", "0", "-1", "", "1.0", "", "", "0.0", "", "1.0"]
PARSED = [math.nan, 0, 1, -1, 1, 0, -1, math.nan, 1, math.nan, math.nan, 0, math.nan, 1]


def same(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "path",
    [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
        "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg",
        "train/patient00001/study1/view1_frontal.jpg",
        "./train/patient00001/study1/view1_frontal.jpg",
    ],
)
def test_image_paths_with_and_without_prefix(path):
    assert split_image_path(path) == ("train", "patient00001", "study1", "view1_frontal.jpg")


@pytest.mark.parametrize("path", ["view1_frontal.jpg", "a/b/train/patient1/study1/x.jpg", "train/p1/study1/x.jpg"])
def test_malformed_paths_are_rejected(path):
    assert split_image_path(path) is None


def test_reads_rows_with_metadata(tmp_path):
    rows = [
        image_row("train/patient00001/study1/view1_frontal.jpg", LABELS, ap_pa="PA", sex="Male", age=71),
        image_row("train/patient00001/study1/view2_lateral.jpg", LABELS, view="Lateral"),
        ["train/patient00002/study3/view1_frontal.jpg", "Unknown", 0, "Frontal", "LL", *LABELS],
    ]
    write_csv(tmp_path / "train.csv", TRAIN_HEADER, rows)
    records = read_image_csv(tmp_path / "train.csv", tmp_path)
    first, lateral, third = records
    assert first.path == rows[0][0]
    assert first.file == f"{tmp_path}/train/patient00001/study1/view1_frontal.jpg"
    assert (first.split, first.patient_id, first.study_id) == ("train", "patient00001", "patient00001/study1")
    assert (first.view, first.ap_pa, first.sex, first.age) == ("frontal", "PA", "Male", 71)
    assert (lateral.view, lateral.ap_pa) == ("lateral", "")
    assert (third.file, third.ap_pa, third.sex, third.age) == (
        f"{tmp_path}/train/patient00002/study3/view1_frontal.jpg",
        "LL",
        "Unknown",
        0,
    )
    assert [r.line for r in records] == [2, 3, 4]
    assert all(same(r.labels, PARSED) for r in records)


def test_label_columns_by_name_in_any_order_and_with_underscores(tmp_path):
    order = list(range(14))[::-1]
    underscored = [CHEXPERT_LABELS[i].replace(" ", "_") for i in order]
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *underscored]
    write_csv(
        tmp_path / "train.csv",
        header,
        [["train/patient00001/study1/view1_frontal.jpg", "F", 50, "Frontal", "AP", *[LABELS[i] for i in order]]],
    )
    (record,) = read_image_csv(tmp_path / "train.csv", tmp_path)
    assert same(record.labels, PARSED)


def test_metadata_columns_are_optional(tmp_path):
    rows = [["valid/patient9/study1/view2_lateral.jpg", *LABELS]]
    write_csv(tmp_path / "valid.csv", ["Path", *CHEXPERT_LABELS], rows)
    (record,) = read_image_csv(tmp_path / "valid.csv", tmp_path)
    assert (record.view, record.ap_pa, record.sex, record.age) == ("lateral", "", "", None)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (["Image", *CHEXPERT_LABELS], [["train/patient1/study1/v.jpg", *LABELS]], "no 'Path' column"),
        (
            ["Path", *CHEXPERT_LABELS[:-1]],
            [["train/patient1/study1/v.jpg", *LABELS[:-1]]],
            r"missing label column\(s\) \['Support Devices'\]",
        ),
        (
            ["Path", *CHEXPERT_LABELS, "Pleural_Effusion"],
            [["train/patient1/study1/v.jpg", *LABELS, "1"]],
            "both name label 'Pleural Effusion'",
        ),
        (
            ["Path", *CHEXPERT_LABELS],
            [
                ["train/patient1/study1/v.jpg", *LABELS],
                ["train/patient1/study1/w.jpg", *LABELS[:5], "2.0", *LABELS[6:]],
            ],
            r"line 3, column 'Edema': label value '2.0' is not one of 1, 0, -1 or blank",
        ),
        (
            ["Path", *CHEXPERT_LABELS],
            [["train/patient1/study1/v.jpg", *LABELS[:2], "yes", *LABELS[3:]]],
            "line 2, column 'Cardiomegaly': label value 'yes'",
        ),
        (
            ["Path", *CHEXPERT_LABELS],
            [["train/patient1/study1/v.jpg", *LABELS], ["images/v.jpg", *LABELS]],
            r"line 3, column 'Path': 'images/v.jpg' is not a CheXpert image path",
        ),
        (
            ["Path", *CHEXPERT_LABELS],
            [["train/patient1/study1/v.jpg", *LABELS], ["train/patient1/study1/v.jpg", *LABELS]],
            r"lines \[2, 3\] \(column 'Path'\) all name 'train/patient1/study1/v.jpg'",
        ),
        (
            ["Path", "Age", *CHEXPERT_LABELS],
            [["train/patient1/study1/v.jpg", "sixty", *LABELS]],
            "line 2, column 'Age': age 'sixty' is not a whole number of years from 0 to 150",
        ),
    ],
)
def test_structural_errors_name_file_line_and_column(tmp_path, header, rows, message):
    csv_path = write_csv(tmp_path / "train.csv", header, rows)
    with pytest.raises(CheXpertFormatError, match=message) as error:
        read_image_csv(csv_path, tmp_path)
    assert str(csv_path) in str(error.value)


def test_test_set_groundtruth_lists_the_images_of_each_study(tmp_path):
    files = {
        "test/patient64741/study1/view1_frontal.jpg": jpeg_bytes(),
        "test/patient64741/study1/view2_lateral.jpg": jpeg_bytes(),
        "test/patient64742/study1/view1_frontal.jpg": jpeg_bytes(),
    }
    for relative, data in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    ints = ["0", "1", "1", "0", "0", "1", "0", "0", "1", "0", "1", "0", "0", "1"]
    header = ["Study", *sorted(CHEXPERT_LABELS)]  # a different column order than train.csv
    by_name = dict(zip(CHEXPERT_LABELS, ints, strict=True))
    ordered = [by_name[name] for name in sorted(CHEXPERT_LABELS)]
    write_csv(
        tmp_path / "groundtruth.csv",
        header,
        [
            ["test/patient64741/study1", *ordered],
            ["CheXpert-v1.0/test/patient64742/study1/", *ordered],
            ["test/patient64743/study1", *ordered],  # no such folder
        ],
    )
    records = read_study_csv(tmp_path / "groundtruth.csv", tmp_path)
    assert [r.path for r in records] == [
        "test/patient64741/study1/view1_frontal.jpg",
        "test/patient64741/study1/view2_lateral.jpg",
        "CheXpert-v1.0/test/patient64742/study1/view1_frontal.jpg",
        "test/patient64743/study1",
    ]
    assert [r.view for r in records[:3]] == ["frontal", "lateral", "frontal"]
    assert records[0].labels == tuple(float(v) for v in ints)
    assert records[0].study_id == records[1].study_id == "patient64741/study1"
    assert [r.problem for r in records] == [None, None, None, "study folder not found"]


def test_find_split_files(tmp_path):
    with pytest.raises(CheXpertFormatError, match="no train.csv, valid.csv or groundtruth.csv here"):
        find_split_files(tmp_path)
    with pytest.raises(CheXpertFormatError, match="data directory not found"):
        find_split_files(tmp_path / "missing")
    make_tree(tmp_path, {"train/patient1/study1/view1_frontal.jpg": jpeg_bytes()})
    assert set(find_split_files(tmp_path)) == {"train", "valid"}


def test_cut_off_rows_and_repeated_headers_are_errors(tmp_path):
    good = ",".join(["train/patient1/study1/v.jpg", *LABELS])
    path = tmp_path / "train.csv"
    path.write_text(",".join(["Path", *CHEXPERT_LABELS]) + "\n" + good + "\n" + "train/patient1/study1/w.jpg,1.0\n")
    with pytest.raises(CheXpertFormatError, match="line 3 has 2 fields but the header has 15"):
        read_image_csv(path, tmp_path)
    path.write_text(",".join(["Path", *CHEXPERT_LABELS, "Edema"]) + "\n" + good + ",1\n")
    with pytest.raises(CheXpertFormatError, match=r"column\(s\) \['Edema'\] appear more than once"):
        read_image_csv(path, tmp_path)


def test_line_numbers_count_blank_lines_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "train.csv"
    rows = [
        ",".join(["train/patient1/study1/v.jpg", *LABELS]),
        "",
        ",".join(["train/patient1/study2/v.jpg", *LABELS]),
        "",
        ",".join(["train/patient1/study3/v.jpg", "3", *LABELS[1:]]),
    ]
    header = "\ufeff" + ",".join(["Path", *CHEXPERT_LABELS]) + "\n"
    path.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(CheXpertFormatError, match="line 6, column 'No Finding': label value '3'"):
        read_image_csv(path, tmp_path)
    path.write_text(header + "\n".join(rows[:4]) + "\n", encoding="utf-8")
    assert [r.line for r in read_image_csv(path, tmp_path)] == [2, 4]


def test_zero_row_csv_gives_no_records(tmp_path):
    write_csv(tmp_path / "valid.csv", TRAIN_HEADER, [])
    assert read_image_csv(tmp_path / "valid.csv", tmp_path) == []


def test_backslashes_and_the_same_image_written_two_ways(tmp_path):
    write_csv(tmp_path / "train.csv", ["Path", *CHEXPERT_LABELS], [["train\\patient1\\study1\\v.jpg", *LABELS]])
    (record,) = read_image_csv(tmp_path / "train.csv", tmp_path)
    assert record.file == f"{tmp_path}/train/patient1/study1/v.jpg"
    write_csv(
        tmp_path / "train.csv",
        ["Path", *CHEXPERT_LABELS],
        [["CheXpert-v1.0-small/train/patient1/study1/v.jpg", *LABELS], [" train/patient1/study1/v.jpg ", *LABELS]],
    )
    with pytest.raises(CheXpertFormatError, match=r"lines \[2, 3\] .* all name 'train/patient1/study1/v.jpg'"):
        read_image_csv(tmp_path / "train.csv", tmp_path)


@pytest.mark.parametrize("age", ["inf", "3000000000", "60.7", "-3", "nan"])
def test_implausible_ages_are_errors(tmp_path, age):
    rows = [["train/patient1/study1/v.jpg", age, *LABELS]]
    write_csv(tmp_path / "train.csv", ["Path", "Age", *CHEXPERT_LABELS], rows)
    with pytest.raises(CheXpertFormatError, match=f"line 2, column 'Age': age '{age}' is not a whole number"):
        read_image_csv(tmp_path / "train.csv", tmp_path)


def test_whole_number_ages_written_as_floats(tmp_path):
    write_csv(
        tmp_path / "train.csv",
        ["Path", "Age", *CHEXPERT_LABELS],
        [["train/patient1/study1/v.jpg", "68.0", *LABELS], ["train/patient1/study1/w.jpg", "", *LABELS]],
    )
    assert [r.age for r in read_image_csv(tmp_path / "train.csv", tmp_path)] == [68, None]


def test_a_path_under_another_split_is_an_error(tmp_path):
    write_csv(
        tmp_path / "train.csv",
        ["Path", *CHEXPERT_LABELS],
        [["train/patient1/study1/v.jpg", *LABELS], ["CheXpert-v1.0-small/valid/patient9/study1/v.jpg", *LABELS]],
    )
    assert len(read_image_csv(tmp_path / "train.csv", tmp_path)) == 2  # no split asked for: accepted
    with pytest.raises(
        CheXpertFormatError, match="line 3, column 'Path': .* lies under valid/, but this file lists the train split"
    ):
        read_image_csv(tmp_path / "train.csv", tmp_path, split="train")


def test_a_study_listed_twice_is_an_error(tmp_path):
    write_csv(
        tmp_path / "groundtruth.csv",
        ["Study", *CHEXPERT_LABELS],
        [["test/patient1/study1", *["0"] * 14], ["CheXpert-v1.0/test/patient1/study1/", *["1"] * 14]],
    )
    with pytest.raises(CheXpertFormatError, match=r"lines \[2, 3\] \(column 'Study'\) all name 'test/patient1/study1'"):
        read_study_csv(tmp_path / "groundtruth.csv", tmp_path)
