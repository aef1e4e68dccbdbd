"""A tiny training setup shared by the tests and the scripts they launch: random rows, a one-block ViT and the
training arguments of a short CPU run."""

from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification

from chexpert_hf.models.tiny import tiny_config
from chexpert_hf.training.arguments import CheXpertTrainingArguments

# A short CPU run: no evaluation, saving, reporting, worker processes or progress bar unless a caller asks.
CPU_RUN = dict(
    use_cpu=True,
    report_to="none",
    eval_strategy="no",
    save_strategy="no",
    dataloader_num_workers=0,
    disable_tqdm=True,
)


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


def tiny_vit(
    num_labels: int = 2, *, width: int = 16, layers: int = 1, image_size: int = 16, patch_size: int = 8, channels=1
) -> ViTForImageClassification:
    """A ViT of ``layers`` blocks ``width`` wide (2 heads) from the current torch random state; 16-px grey input
    by default, as :class:`Rows` delivers."""
    config = tiny_config(
        "vit",
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=width,
        patch_size=patch_size,
        num_channels=channels,
    )
    return ViTForImageClassification(ViTConfig(**config, image_size=image_size, num_labels=num_labels))


def cpu_arguments(output_dir, **fields) -> CheXpertTrainingArguments:
    """The training arguments of a short CPU run into ``output_dir`` (:data:`CPU_RUN`), ``fields`` on top."""
    return CheXpertTrainingArguments(output_dir=str(Path(output_dir)), **{**CPU_RUN, **fields})
