import datasets
import numpy as np
import pytest
import torch

from chexpert_hf.data import load_prepared
from chexpert_hf.data.transforms import decode_batch, image_bytes, to_float


def test_image_bytes_are_the_embedded_jpegs(prepared_dir):
    train = load_prepared(prepared_dir)["train"]
    raw = train.cast_column("image", datasets.Image(decode=False))
    assert image_bytes(train, 2, 7) == [row["bytes"] for row in raw.select(range(2, 7))["image"]]
    subset = train.select([5, 1])  # an indices mapping is followed
    assert image_bytes(subset, 0, 2) == [raw[5]["image"]["bytes"], raw[1]["image"]["bytes"]]


def test_decode_batch_gives_uint8_squares_of_the_same_picture(prepared_dir):
    train = load_prepared(prepared_dir)["train"]
    batch = decode_batch(image_bytes(train, 0, 4), 64)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 1, 64, 64)
    reference = np.asarray(train[0]["image"].resize((64, 64)), dtype=np.float32)
    assert np.abs(batch[0, 0].numpy().astype(np.float32) - reference).mean() < 3


@pytest.mark.parametrize("mean, std", [((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_to_float_normalises_and_repeats_channels(mean, std):
    batch = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    pixels = to_float(batch, mean, std, channels=3)
    assert pixels.shape == (1, 3, 1, 3) and pixels.dtype == torch.float32
    for channel in range(3):
        expected = (torch.tensor([0.0, 1.0, 0.2]) - mean[channel]) / std[channel]
        torch.testing.assert_close(pixels[0, channel, 0], expected)
    with pytest.raises(ValueError, match="need 3 values"):
        to_float(batch, (0.5,), (0.5,), channels=3)
