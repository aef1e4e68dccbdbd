"""A tiny training set shared by the tests and the scripts they launch."""

import torch


class Rows(torch.utils.data.Dataset):
    """Random 16-px grey images with 2 labels, as the collator would deliver them (uint8 pixels)."""

    def __init__(self, count: int = 32):
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randint(0, 256, (count, 1, 16, 16), dtype=torch.uint8, generator=generator)
        self.labels = (torch.rand(count, 2, generator=generator) < 0.4).float()

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index], "row_index": index}
