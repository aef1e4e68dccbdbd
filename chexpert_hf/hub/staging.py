"""The Trainer's Hub pushes, each from an allowlisted, sanitized, audited staging folder.

:class:`HubStagingMixin` replaces the ``transformers.Trainer`` methods that upload, so that a run with
``push_to_hub`` never uploads its output folder or a checkpoint directly: every push copies what may be published
into a fresh folder (:func:`chexpert_hf.hub.push.stage_model_folder` / ``stage_checkpoint_folder``), uploads that
copy, and removes it once its upload has finished. It goes before ``Trainer`` in the bases
(``class CheXpertTrainer(HubStagingMixin, Trainer)``) so its ``super()`` calls reach the Trainer's own methods.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers.trainer_utils import HubStrategy, SaveStrategy
from transformers.utils import PushInProgress, hf_api

from chexpert_hf.hub.push import check_hub_access, stage_checkpoint_folder, stage_model_folder, trainer_repo_id


class HubStagingMixin:
    """Pushes of a ``transformers.Trainer`` through staging folders under ``output_dir/.hub-staging-*``."""

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Check for a token that can push (and a reachable Hub) before anything else, then create the repo."""
        if self.is_world_process_zero():
            check_hub_access(
                token if token is not None else self.args.hub_token,
                repo_id=trainer_repo_id(self.args.hub_model_id, self.args.output_dir),
            )
        super().init_hf_repo(token=token, private=private)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the training job writes our own card, and the Trainer's generic one must never replace it."""

    def _staging_folder(self, name: str) -> str:
        """A new folder to stage one upload in, under a temporary folder next to the outputs (same disk)."""
        root = getattr(self, "_hub_staging_root", None)
        if root is None or not os.path.isdir(root):
            os.makedirs(self.args.output_dir, exist_ok=True)
            root = self._hub_staging_root = tempfile.mkdtemp(prefix=".hub-staging-", dir=self.args.output_dir)
        return tempfile.mkdtemp(prefix=f"{name}-", dir=root)

    def _remove_staging_root(self) -> None:
        root = getattr(self, "_hub_staging_root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
            self._hub_staging_root = None

    def _upload_staged(
        self,
        folder: str,
        commit_message: str,
        token: str | None,
        revision: str | None,
        blocking: bool,
        path_in_repo: str | None = None,
    ):
        """Upload ``folder``; it is removed once its upload has finished (at once when blocking), never before."""
        try:
            result = hf_api().upload_folder(
                repo_id=self.hub_model_id,
                folder_path=folder,
                path_in_repo=path_in_repo,
                commit_message=commit_message,
                token=token,
                run_as_future=not blocking,
                revision=revision,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if blocking:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            result.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
        return result

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ):
        """Upload the staged output folder (:func:`chexpert_hf.hub.push.stage_model_folder`), not the folder itself:
        never ``training_args.bin``, TensorBoard logs, predictions or checkpoints, and never without the card."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:  # push_to_hub=False in the arguments
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        revision = revision if revision is not None else self.args.hub_revision
        self._finish_current_push()
        staging = self._staging_folder("model")
        try:
            stage_model_folder(self.args.output_dir, staging, token=token)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        result = self._upload_staged(staging, commit_message, token, revision, blocking)
        if blocking:
            self._finish_current_push()  # nothing is uploading now: the staging root goes too
        return result

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """As the base class (in the background, one push at a time unless ``hub_always_push``), but uploading staged
        copies: the checkpoint's model with the card, metrics and recipe that exist so far, and for ``checkpoint`` /
        ``all_checkpoints`` the checkpoint's resume files (never ``training_args.bin``)."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.args.save_strategy == SaveStrategy.STEPS:
            commit_message = f"Training in progress, step {self.state.global_step}"
        else:
            commit_message = f"Training in progress, epoch {int(self.state.epoch)}"
        token, revision = self.args.hub_token, self.args.hub_revision

        model_staging = self._staging_folder("model")
        checkpoint_staging = None
        try:
            stage_model_folder(
                self.args.output_dir, model_staging, token=token, model_dir=checkpoint_folder, require_card=False
            )  # the card is written after training
            if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
                checkpoint_staging = self._staging_folder("checkpoint")
                stage_checkpoint_folder(checkpoint_folder, checkpoint_staging, token=token)
        except BaseException:
            for folder in (model_staging, checkpoint_staging):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            raise
        jobs = [self._upload_staged(model_staging, commit_message, token, revision, blocking=False)]
        if checkpoint_staging is not None:
            path_in_repo = (
                "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else Path(checkpoint_folder).name
            )
            jobs.append(
                self._upload_staged(
                    checkpoint_staging,
                    commit_message + ", checkpoint",
                    token,
                    revision,
                    blocking=False,
                    path_in_repo=path_in_repo,
                )
            )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def _finish_current_push(self) -> None:
        """Wait for the uploads in progress, then remove the staging folders (each goes when its upload ends)."""
        super()._finish_current_push()
        if getattr(self, "push_in_progress", None) is None or self.push_in_progress.is_done():
            self._remove_staging_root()
