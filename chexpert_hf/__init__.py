"""chexpert_hf: benchmark Vision Transformers on CheXpert with Hugging Face Transformers and Accelerate."""

__version__ = "0.1.0"
