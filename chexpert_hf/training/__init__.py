"""The training stage: recipe fields and parsing (``arguments``), the Trainer subclass (``trainer``), the
feature cache for head-only runs, FSDP and process-group helpers, and the job itself (``train``)."""
