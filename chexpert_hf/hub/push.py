"""Publishing to the Hugging Face Hub: a checked token first, then an allowlisted, sanitized, audited copy.

Nothing is ever uploaded from a training output folder directly. The files that may be published are copied into
a staging folder (an allowlist: the model, its processor and code, the card, the metrics and results), the two that
hold local paths are rewritten (``recipe.yaml``, ``trainer_state.json``), and the staged folder is audited: an access
token, an absolute path or a CheXpert patient identifier anywhere in a text file stops the push.
``training_args.bin`` (a pickle holding ``hub_token`` in clear), TensorBoard logs, predictions and evaluation
folders (patient identifiers) are never staged.

A run that will push calls :func:`check_hub_access` with the repository it will push to before it trains, so a
missing token, one that cannot write there (read-only, fine-grained without ``repo.write`` on that namespace, an
organization its owner is not a writing member of) or an unreachable Hub stops it at once rather than after hours
of training.

The prepared CheXpert dataset is pushed private, always: CheXpert's Research Use Agreement does not allow
redistribution.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from chexpert_hf.hub.model_card import CHEXPERT_BIBTEX, CHEXPERT_LICENSE_NAME, CHEXPERT_URL
from chexpert_hf.hub.privacy import find_leaks, first_leak, is_absolute_path, redact_tokens
from chexpert_hf.outputs import (
    CALIBRATION_PNG,
    DATASET_DICT_JSON,
    GENERATION_CONFIG,
    METRICS_JSON,
    METRICS_MD,
    MODEL_CARD,
    MODEL_CONFIG,
    PREPARE_INFO_JSON,
    PROCESSOR_FILES,
    RECIPE_YAML,
    RESULTS_JSONS,
    RESUME_FILES,
    RNG_STATE_PATTERN,
    ROC_PNG,
    SAFE_WEIGHTS,
    SAFE_WEIGHTS_INDEX,
    SUBGROUPS_JSON,
    SUBGROUPS_MD,
    SUBGROUPS_PNG,
    TRAINER_STATE,
)

StrPath = str | os.PathLike
logger = logging.getLogger(__name__)

# --- what is published -----------------------------------------------------------------------------------------
# (names from chexpert_hf.outputs; SAFE_WEIGHTS, SAFE_WEIGHTS_INDEX, PROCESSOR_FILES, TRAINER_STATE, RESUME_FILES too)
CONFIG = MODEL_CONFIG
CARD = MODEL_CARD
# written with the card (aggregates only: no patient id, no image path)
CARD_COMPANIONS = (ROC_PNG, METRICS_JSON, METRICS_MD, CALIBRATION_PNG, SUBGROUPS_JSON, SUBGROUPS_MD, SUBGROUPS_PNG)
RESULTS = RESULTS_JSONS
OPTIONAL_MODEL_FILES = (GENERATION_CONFIG,)
RECIPE = RECIPE_YAML
# what a checkpoint needs to resume, beside the model (RESUME_FILES; never training_args.bin)
RESUME_PATTERNS = (RNG_STATE_PATTERN,)

# what must never be published: the patterns of chexpert_hf.hub.privacy
_SNIFF_BYTES = 8192


class HubAccessError(RuntimeError):
    """No usable Hub token, or the Hub cannot be reached: raised before any work that would be pushed."""


class PublishError(RuntimeError):
    """A folder cannot be published: a required file is missing, or a file would leak something."""


# ---------------------------------------------------------------------------------------------------------------
# Access
# ---------------------------------------------------------------------------------------------------------------


def _redact(text: str, token: str | None) -> str:
    text = redact_tokens(text)
    return text.replace(token, "***") if token else text


def _is_network_error(error: BaseException) -> bool:
    """A failure to reach the endpoint (refused, DNS, timeout, TLS), whatever HTTP client the Hub library uses."""
    module = type(error).__module__.split(".")[0]
    return isinstance(error, (OSError, TimeoutError)) or module in (
        "httpx",
        "httpx2",
        "httpcore",
        "requests",
        "urllib3",
    )


def trainer_repo_id(hub_model_id: str | None, output_dir: StrPath) -> str:
    """The repository a Trainer pushes to: ``hub_model_id``, else the output folder's name (in the token owner's
    namespace), as ``transformers.Trainer.init_hf_repo`` names it."""
    return hub_model_id or Path(output_dir).absolute().name


def check_hub_access(token: str | None = None, repo_id: str | None = None, *, repo_type: str = "model") -> str:
    """The user name of a token that can push; :class:`HubAccessError` (one clear message) when there is none,
    the Hub cannot be reached, the token is rejected or it cannot write. Messages name the endpoint, never the
    token.

    A read token is refused, and so is a fine-grained token without ``repo.write`` anywhere. With ``repo_id`` (a
    name without a namespace is in the token owner's), write access to that repository is proven before any work:
    its namespace must be the user's or an organization they belong to with a role other than ``read``, and a
    fine-grained token needs ``repo.write`` on that namespace (or on that repository). A token whose role
    ``whoami`` does not state (neither read, write nor fine-grained) is put to the test instead: the repository is
    created, private, unless it exists.
    """
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise HubAccessError(
            "no Hugging Face token found: run `hf auth login` or set HF_TOKEN (or pass hub_token) with a token "
            "that has write access, then run again"
        )
    api = HfApi()
    endpoint = api.endpoint
    try:
        info = api.whoami(token=token)
    except Exception as error:
        problem = _access_error(error, endpoint, token, "could not check the token")
        if problem is error:
            raise
        raise problem from None
    name = info.get("name") or "?"
    access = (info.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        raise HubAccessError(
            f"the token of {name!r} at {endpoint} is read-only: pushing needs a token with write "
            f"access (a 'write' or fine-grained token); run `hf auth login` with one"
        )
    if role == "fineGrained" and not _write_grants(access):
        raise HubAccessError(
            f"the fine-grained token of {name!r} at {endpoint} has the {REPO_WRITE} permission on "
            f"no namespace, so it cannot push; edit its permissions on the Hub (write access to "
            f"the repositories of your namespace or an organization's) or use a 'write' token"
        )
    if repo_id is None:
        return name
    namespace, _, repository = repo_id.rpartition("/")
    namespace = namespace or name
    target = f"{namespace}/{repository}"
    where = f"{endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{target}"
    if namespace.lower() != name.lower():
        orgs = {str(org.get("name")).lower(): org for org in info.get("orgs") or [] if isinstance(org, dict)}
        org = orgs.get(namespace.lower())
        # a fine-grained token is scoped to organizations its owner belongs to, whatever whoami lists
        if org is None and not (role == "fineGrained" and _grants_write(access, namespace, target, repo_type)):
            listed = ", ".join(sorted(str(org.get("name")) for org in orgs.values())) or "none"
            raise HubAccessError(
                f"{name!r} cannot push to {where}: {namespace!r} is neither their namespace nor one "
                f"of their organizations ({listed}); push to {name}/{repository} or join "
                f"{namespace!r}"
            )
        if org is not None and org.get("roleInOrg") == "read":
            raise HubAccessError(
                f"{name!r} cannot push to {where}: their role in the organization {namespace!r} is "
                f"'read'; an admin of {namespace!r} can make it 'write'"
            )
    if role == "fineGrained":
        if not _grants_write(access, namespace, target, repo_type):
            granted = ", ".join(_write_grants(access))
            raise HubAccessError(
                f"the fine-grained token of {name!r} cannot push to {where}: it lacks the "
                f"{REPO_WRITE} permission on {namespace!r} (it has {REPO_WRITE} on {granted} only); "
                f"add {namespace!r} to the token's permissions on the Hub, or use another token"
            )
    elif role != "write":
        _create_to_prove(api, endpoint, token, name, target, repo_type, where)
    return name


REPO_WRITE = "repo.write"  # the fine-grained permission to push to a repository


def _access_error(error: Exception, endpoint: str, token: str, doing: str) -> Exception:
    """The :class:`HubAccessError` that says why a Hub call failed (offline, rejected token, unreachable); any other
    error as it is."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return HubAccessError(
            f"cannot reach the Hub at {endpoint}: offline mode is on (HF_HUB_OFFLINE=1); unset it to push"
        )
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            return HubAccessError(
                f"the Hub at {endpoint} rejected the token (401 Unauthorized): it is invalid, expired or revoked; "
                f"run `hf auth login` with a valid token or set HF_TOKEN"
            )
        return HubAccessError(f"the Hub at {endpoint} {doing} (HTTP {status}); try again later")
    if _is_network_error(error):
        reason = _redact(str(error), token) or type(error).__name__
        return HubAccessError(
            f"cannot reach the Hub at {endpoint} ({reason}); check the network, a proxy or HF_ENDPOINT"
        )
    return error


def _scoped_grants(access: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """``(entity type, entity name, permissions)`` of each scoped grant of a fine-grained token (``whoami``'s
    ``auth.accessToken.fineGrained.scoped``: ``{"entity": {"type": "user" | "org" | "model" | ..., "name": ...},
    "permissions": [...]}``)."""
    grants = []
    for entry in (access.get("fineGrained") or {}).get("scoped") or []:
        if isinstance(entry, dict):
            entity = entry.get("entity") or {}
            grants.append(
                (str(entity.get("type", "")), str(entity.get("name", "")), list(entry.get("permissions") or []))
            )
    return grants


def _write_grants(access: dict[str, Any]) -> list[str]:
    """The namespaces and repositories a fine-grained token may push to (``global`` when it may push anywhere)."""
    anywhere = ["global"] if REPO_WRITE in ((access.get("fineGrained") or {}).get("global") or []) else []
    return anywhere + [name for _, name, permissions in _scoped_grants(access) if REPO_WRITE in permissions]


def _grants_write(access: dict[str, Any], namespace: str, target: str, repo_type: str) -> bool:
    """Whether a fine-grained token may push to ``target``: ``repo.write`` among its global permissions, on
    ``namespace`` (a user or an organization) or on that repository itself."""
    if REPO_WRITE in ((access.get("fineGrained") or {}).get("global") or []):
        return True
    for kind, entity, permissions in _scoped_grants(access):
        if REPO_WRITE in permissions and (
            (kind in ("user", "org") and entity.lower() == namespace.lower())
            or (kind == repo_type and entity.lower() == target.lower())
        ):
            return True
    return False


def _create_to_prove(api, endpoint: str, token: str, name: str, target: str, repo_type: str, where: str) -> None:
    """Create ``target`` (private) when ``whoami`` does not say what the token may do: a 401/403 proves a push would
    fail; 409 (it exists) is accepted, the Hub checks writing to it at the push."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(target, repo_type=repo_type, private=True, exist_ok=False, token=token)
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 409:
            return
        if status == 403:
            raise HubAccessError(
                f"the token of {name!r} cannot push to {where}: the Hub refused to create it (HTTP "
                f"403 Forbidden); use a token with write access to {target.split('/')[0]!r}"
            ) from None
        raise _access_error(error, endpoint, token, f"could not create {where}") from None
    except Exception as error:
        problem = _access_error(error, endpoint, token, f"could not create {where}")
        if problem is error:
            raise
        raise problem from None
    logger.info("created %s (private) to prove that the token can push there", where)


# ---------------------------------------------------------------------------------------------------------------
# Sanitizing
# ---------------------------------------------------------------------------------------------------------------


def _home() -> str:
    return os.path.expanduser("~")


def _is_local_path(value: str) -> bool:
    """An absolute path (POSIX or Windows), or one under the home directory (``~`` included)."""
    if not value or "\n" in value:
        return False
    if os.path.isabs(value) or value.startswith("~") or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    home = _home()
    return len(home) > 1 and (value == home or value.startswith(home.rstrip("/") + "/"))


def _last_component(value: str) -> str:
    parts = [part for part in re.split(r"[\\/]", value) if part]
    return parts[-1] if parts else ""


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and (key.endswith("_token") or key == "token")


def scrub(value: Any) -> Any:
    """``value`` with every local path replaced by its last component and every ``*_token`` key dropped."""
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items() if not _is_secret_key(key)}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    if isinstance(value, str) and _is_local_path(value):
        return _last_component(value)
    return value


def _write_recipe(source: Path, target: Path) -> None:
    text = source.read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PublishError(f"{source} is not valid YAML ({error}); it cannot be sanitized for publishing") from None
    if values is not None and not isinstance(values, dict):
        raise PublishError(f"{source} is not a recipe (a YAML mapping); it cannot be sanitized for publishing")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if first_leak(line, machine_paths=()) is None:  # a comment that would stop the audit is dropped
            header.append(line)
    body = yaml.safe_dump(scrub(values or {}), sort_keys=False)
    target.write_text("\n".join([*header, body]) if header else body, encoding="utf-8")


def _write_trainer_state(source: Path, target: Path) -> None:
    try:
        state = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PublishError(f"{source} is not valid JSON ({error})") from None
    if isinstance(state, dict) and state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = _last_component(str(state["best_model_checkpoint"]))
    target.write_text(json.dumps(scrub(state), indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Auditing
# ---------------------------------------------------------------------------------------------------------------


def _text_problems(
    text: str, tokens: Sequence[str], forbidden_paths: Sequence[StrPath], binary: bool = False
) -> list[str]:
    """What :func:`chexpert_hf.hub.privacy.find_leaks` finds, the paths of this machine included (only those in
    text read out of a binary file)."""
    leaks = find_leaks(text, tokens=tokens, machine_paths=forbidden_paths, any_path=not binary)
    return [leak.describe() for leak in leaks]


def _readable_texts(path: Path) -> list[tuple[str, bool]]:
    """The text an auditor must read in ``path``, each with whether it was decoded from binary data: the whole file
    when it is UTF-8 text, the JSON header of a safetensors file, the pickles inside a ``torch.save`` zip (binary);
    nothing for other binaries (images)."""
    if path.suffix == ".safetensors":
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            return [(handle.read(min(size, 100_000_000)).decode("utf-8", errors="replace"), False)]
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if b"\x00" not in head:
        try:
            return [(path.read_bytes().decode("utf-8"), False)]
        except UnicodeDecodeError:
            return []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [
                (archive.read(name).decode("latin-1"), True) for name in archive.namelist() if name.endswith(".pkl")
            ]
    return []


def audit_folder(folder: StrPath, *, token: str | None = None, forbidden_paths: Sequence[StrPath] = ()) -> None:
    """Raise :class:`PublishError` naming each file of ``folder`` and the kind of problem (never the token) when a
    file holds the token (``token`` or the one stored on this machine), anything shaped like an access token, an
    absolute path (of this machine: home, working directory, ``/tmp/``, ``forbidden_paths``; or any other) or a
    CheXpert patient identifier: the patterns of :mod:`chexpert_hf.hub.privacy`, which the model card applies too."""
    from huggingface_hub import get_token

    folder = Path(folder)
    tokens = [t for t in {token, get_token()} if t]
    problems = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        for text, binary in _readable_texts(path):
            problems += [f"{relative}: {problem}" for problem in _text_problems(text, tokens, forbidden_paths, binary)]
    if problems:
        listed = "; ".join(dict.fromkeys(problems))
        raise PublishError(f"{folder} must not be published: {listed}")


# ---------------------------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------------------------


def _empty_staging(staging_dir: StrPath) -> Path:
    staging = Path(staging_dir)
    if staging.exists() and any(staging.iterdir()):
        raise PublishError(f"the staging folder {staging} is not empty; stage into a new folder")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _copy(source: Path, staging: Path, name: str | None = None) -> None:
    shutil.copyfile(source, staging / (name or source.name))


def _weight_files(model_dir: Path) -> list[str]:
    if (model_dir / SAFE_WEIGHTS).is_file():
        return [SAFE_WEIGHTS]
    index = model_dir / SAFE_WEIGHTS_INDEX
    if not index.is_file():
        raise PublishError(f"{model_dir} holds no model weights: no {SAFE_WEIGHTS} nor {SAFE_WEIGHTS_INDEX}")
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as error:
        raise PublishError(f"{index} is not a weight index ({error!r})") from None
    missing = [shard for shard in shards if not (model_dir / shard).is_file()]
    if missing:
        raise PublishError(f"{model_dir} is missing weight shard(s) named in {SAFE_WEIGHTS_INDEX}: {missing}")
    return [SAFE_WEIGHTS_INDEX, *shards]


def _code_files(model_dir: Path, names: Iterable[str]) -> list[str]:
    """The ``.py`` files that ``auto_map`` in these JSON files names (``trust_remote_code`` models)."""
    modules = set()
    for name in names:
        path = model_dir / name
        if not path.is_file():
            continue
        auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}
        for reference in auto_map.values():
            for item in reference if isinstance(reference, list) else [reference]:
                if isinstance(item, str) and "--" not in item:  # "repo--module.Class" lives in another repo
                    modules.add(item.rsplit(".", 1)[0] + ".py")
    missing = sorted(module for module in modules if not (model_dir / module).is_file())
    if missing:
        raise PublishError(f"{model_dir} is missing the code file(s) its auto_map names: {missing}")
    return sorted(modules)


def _stage_model_files(model_dir: Path, staging: Path, processor_fallback: Path | None = None) -> None:
    if not (model_dir / CONFIG).is_file():
        raise PublishError(f"{model_dir} holds no {CONFIG}: it is not a saved model")
    names = [*_weight_files(model_dir), CONFIG]
    names += [name for name in OPTIONAL_MODEL_FILES if (model_dir / name).is_file()]
    processor_dir = model_dir
    if not any((model_dir / name).is_file() for name in PROCESSOR_FILES) and processor_fallback is not None:
        processor_dir = processor_fallback
    processors = [name for name in PROCESSOR_FILES if (processor_dir / name).is_file()]
    for name in names + _code_files(model_dir, [CONFIG]):
        _copy(model_dir / name, staging)
    for name in processors:
        _copy(processor_dir / name, staging)
    for name in _code_files(processor_dir, processors):
        if not (staging / name).exists():
            _copy(processor_dir / name, staging)


def _listing(staging: Path) -> list[str]:
    return sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())


def stage_model_folder(
    output_dir: StrPath,
    staging_dir: StrPath,
    *,
    token: str | None = None,
    model_dir: StrPath | None = None,
    require_card: bool = True,
) -> list[str]:
    """Copy what may be published of a training output folder into ``staging_dir`` (new or empty), sanitized and
    audited; returns the sorted relative file list.

    Staged: the weights (``model.safetensors``, or the index and its shards), ``config.json``, the processor, the
    code files ``auto_map`` names, ``README.md``, ``roc.png``, ``metrics.json``, ``metrics.md``, the results JSON
    files, ``trainer_state.json`` (``best_model_checkpoint`` reduced to the folder name) and ``recipe.yaml`` (local
    paths reduced to their last component, ``*_token`` keys dropped). ``model_dir`` takes the model files from
    another folder (a checkpoint, during training): then only the card and its companions and the recipe come from
    ``output_dir``. Without ``README.md`` this is an error unless ``require_card=False``.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise PublishError(f"{output_dir} is not a folder")
    source = Path(model_dir) if model_dir is not None else output_dir
    if require_card and not (output_dir / CARD).is_file():
        raise PublishError(
            f"{output_dir} has no model card ({CARD}): a model is never published without its card; "
            f"write the card first"
        )
    staging = _empty_staging(staging_dir)
    _stage_model_files(source, staging, processor_fallback=output_dir)
    extras = [CARD, *CARD_COMPANIONS]
    if model_dir is None:
        extras += list(RESULTS)
    for name in extras:
        if (output_dir / name).is_file():
            _copy(output_dir / name, staging)
    if model_dir is None and (output_dir / TRAINER_STATE).is_file():
        _write_trainer_state(output_dir / TRAINER_STATE, staging / TRAINER_STATE)
    if (output_dir / RECIPE).is_file():
        _write_recipe(output_dir / RECIPE, staging / RECIPE)
    audit_folder(staging, token=token, forbidden_paths=[output_dir, source])
    return _listing(staging)


def stage_checkpoint_folder(checkpoint_dir: StrPath, staging_dir: StrPath, *, token: str | None = None) -> list[str]:
    """Copy what resuming from ``checkpoint_dir`` needs into ``staging_dir``, sanitized and audited: the model files,
    the processor, ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth``, ``trainer_state.json``
    and ``recipe.yaml`` (the checkpoint's, else its output folder's); never ``training_args.bin``."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise PublishError(f"{checkpoint_dir} is not a folder")
    staging = _empty_staging(staging_dir)
    _stage_model_files(checkpoint_dir, staging, processor_fallback=checkpoint_dir.parent)
    for name in RESUME_FILES:
        if (checkpoint_dir / name).is_file():
            _copy(checkpoint_dir / name, staging)
    for pattern in RESUME_PATTERNS:
        for path in sorted(checkpoint_dir.glob(pattern)):
            _copy(path, staging)
    if (checkpoint_dir / TRAINER_STATE).is_file():
        _write_trainer_state(checkpoint_dir / TRAINER_STATE, staging / TRAINER_STATE)
    for folder in (checkpoint_dir, checkpoint_dir.parent):
        if (folder / RECIPE).is_file():
            _write_recipe(folder / RECIPE, staging / RECIPE)
            break
    audit_folder(staging, token=token, forbidden_paths=[checkpoint_dir.parent, checkpoint_dir])
    return _listing(staging)


# ---------------------------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------------------------


def push_output_folder(
    output_dir: StrPath,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model",
) -> str:
    """Check access, stage ``output_dir`` (:func:`stage_model_folder`) and upload the staged folder to the model
    repository ``repo_id`` (created if needed); returns the repository URL."""
    from huggingface_hub import HfApi, get_token

    check_hub_access(token, repo_id)
    token = token or get_token()
    with tempfile.TemporaryDirectory(prefix="chexpert-hf-publish-") as temporary:
        staging = Path(temporary) / "model"
        stage_model_folder(output_dir, staging, token=token)
        api = HfApi()
        url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        api.upload_folder(
            repo_id=getattr(url, "repo_id", repo_id),
            folder_path=str(staging),
            commit_message=commit_message,
            token=token,
        )
    return str(url)


def _prepared_counts(prepared_dir: Path) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Split sizes, skipped rows and label order from ``prepare_info.json`` (only counts and names: it also holds
    the source path, which is never published)."""
    from chexpert_hf.labels import CHEXPERT_LABELS

    info_path = prepared_dir / PREPARE_INFO_JSON
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    images = {str(k): int(v) for k, v in (info.get("images") or {}).items()}
    skipped = {str(k): int(v) for k, v in (info.get("skipped") or {}).items()}
    labels = [str(label) for label in info.get("label_names") or CHEXPERT_LABELS]
    return images, skipped, labels


def dataset_card(repo_id: str, images: dict[str, int], skipped: dict[str, int], labels: Sequence[str]):
    """The card of a prepared CheXpert dataset: licence metadata and a body that says what the columns are."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        license="other",
        license_name=CHEXPERT_LICENSE_NAME,
        license_link=CHEXPERT_URL,
        pretty_name="CheXpert (prepared by chexpert_hf)",
        task_categories=["image-classification"],
        tags=["medical", "chest-x-ray", "radiology", "chexpert", "multi-label-image-classification"],
    )
    splits = "\n".join(f"| {split} | {count:,} | {skipped.get(split, 0):,} |" for split, count in images.items())
    label_list = "\n".join(f"{index}. {label}" for index, label in enumerate(labels))
    body = f"""
# CheXpert, prepared by chexpert_hf

Chest radiographs of the CheXpert dataset (Stanford ML Group) with their 14 observation labels, converted by
`chexpert-hf prepare` into an Arrow `DatasetDict`.

## Licence: this repository must stay private

CheXpert is distributed under the Stanford University School of Medicine CheXpert Dataset Research Use Agreement
({CHEXPERT_URL}). The agreement does not allow redistribution: this copy is **private** and must stay so; share it
only with people who have accepted the agreement themselves, and never make the repository public.

## Columns

- `image`: the radiograph (grey, JPEG), resized by `prepare`;
- `labels`: the {len(labels)} raw labels in CheXpert's order (below): `1` positive, `0` negative, `-1` uncertain,
  `NaN` blank (not mentioned); no uncertainty policy applied;
- `path`: the image's path inside the CheXpert tree
  (`CheXpert-v1.0-small/<split>/patientNNNNN/studyN/viewN_<view>.jpg`);
- `patient_id`: the CheXpert patient identifier (`patientNNNNN`);
- `study_id`: patient and study (`patientNNNNN/studyN`); scores are aggregated per study;
- `view`: `frontal` or `lateral`;
- `ap_pa`: the projection of a frontal image (`AP`, `PA`, ...), empty for a lateral one;
- `sex`: as recorded in CheXpert (`Male`, `Female`, `Unknown`);
- `age`: in years (CheXpert records 0 where unknown).

Label order (the index into `labels`):

{label_list}

## Splits

| split | images | rows skipped by prepare |
|---|---|---|
{splits}

## Loading

```python
from datasets import load_dataset

dataset = load_dataset("{repo_id}", token=True)  # a token with access to this private repository
```

The `chexpert_hf` training job reads the same data from a folder written by `chexpert-hf prepare`.

## Citation

```bibtex
{CHEXPERT_BIBTEX}
```
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def push_prepared_dataset(prepared_dir: StrPath, repo_id: str, *, token: str | None = None) -> str:
    """Push a folder written by ``chexpert-hf prepare`` to the **private** dataset repository ``repo_id``, with a
    dataset card (licence, columns, splits); returns the repository URL. ``prepare_info.json`` and ``skipped.csv``
    (local paths) are not uploaded."""
    import datasets
    from huggingface_hub import HfApi, get_token

    prepared_dir = Path(prepared_dir)
    if not (prepared_dir / DATASET_DICT_JSON).is_file():
        raise PublishError(
            f"{prepared_dir} is not a prepared CheXpert dataset (no dataset_dict.json); run "
            f"`chexpert-hf prepare` first and push its output folder"
        )
    check_hub_access(token, repo_id, repo_type="dataset")
    token = token or get_token()
    dataset = datasets.load_from_disk(str(prepared_dir))
    if not isinstance(dataset, datasets.DatasetDict):
        raise PublishError(f"{prepared_dir} holds one split, not a prepared CheXpert DatasetDict")
    for split, part in dataset.items():
        if "path" in part.column_names and any(is_absolute_path(p) for p in part.select_columns(["path"])["path"]):
            raise PublishError(f"{prepared_dir}: split {split} has absolute image paths in its `path` column")

    images, skipped, labels = _prepared_counts(prepared_dir)
    images = images or {split: len(part) for split, part in dataset.items()}
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="chexpert-hf-card-") as temporary:
        card_path = Path(temporary) / CARD
        dataset_card(repo_id, images, skipped, labels).save(card_path)
        audit_folder(temporary, token=token, forbidden_paths=[prepared_dir])
        url = api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True, token=token)
        repo_id = getattr(url, "repo_id", repo_id)
        api.upload_file(
            path_or_fileobj=str(card_path),
            path_in_repo=CARD,
            repo_id=repo_id,
            repo_type="dataset",
            commit_message="Add the dataset card",
            token=token,
        )
    dataset.push_to_hub(repo_id, private=True, token=token)
    return str(url)
