"""Hub publishing: the exact staged folders, the sanitizing and the audit, the early failure without a usable token
or a reachable Hub, the private dataset push, and the Trainer's own pushes. No test reaches the network: the Hub
calls are replaced on ``HfApi`` (the class, so transformers' cached instance is covered too), and the ones that
must fail to connect point at a closed port or a tiny server on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from conftest import free_port, tiny_model
from huggingface_hub import HfApi, RepoUrl, constants
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image
from scripts.tiny_training import Rows, cpu_arguments, tiny_vit

try:  # the HTTP client huggingface_hub uses
    import httpx2 as httpx
except ImportError:  # older huggingface_hub
    import httpx

from chexpert_hf.hub.push import (
    HubAccessError,
    PublishError,
    audit_folder,
    check_hub_access,
    push_output_folder,
    push_prepared_dataset,
    stage_checkpoint_folder,
    stage_model_folder,
    trainer_repo_id,
)
from chexpert_hf.models.tiny import tiny_config

TOKEN = "hf_" + "a1B2c3D4e5" * 4  # shaped like a real token; never valid
CARD_TEXT = "---\nlicense: apache-2.0\n---\n# tiny CheXpert model\n\nMean AUROC 0.9 (5 labels).\n"
_real_whoami = HfApi.whoami  # before any test replaces it
_REQUEST = httpx.Request("POST", "https://huggingface.co/api/repos/create")
MICRO_VIT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)  # over tiny_config
PUBLISHED_RESULTS = [
    "all_results.json",
    "eval_results.json",
    "metrics.json",
    "metrics.md",
    "roc.png",
    "train_results.json",
]


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_stored_token(tmp_path_factory, monkeypatch):
    """Every test starts logged out: no HF_TOKEN, and a token file in an empty Hugging Face home."""
    home = tmp_path_factory.mktemp("hf_home")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


class FakeHub:
    """Records every Hub call; ``upload_folder`` lists (and reads) the folder while the "upload" runs."""

    def __init__(self, role: str = "write", upload_seconds: float = 0.0):
        self.calls: list[tuple[str, dict]] = []
        self.role = role
        # whoami-v2 as the Hub answers it; the tests' repositories live in the organization "user"
        self.whoami_payload: dict | None = None
        self.create_status: int | None = None  # an HTTP status for create_repo to fail with
        self.upload_seconds = upload_seconds
        self.executor = ThreadPoolExecutor(max_workers=2)

    def install(self, monkeypatch) -> FakeHub:
        hub = self

        def whoami(api, token=None, **kwargs):
            hub.calls.append(("whoami", {"token": token}))
            if hub.whoami_payload is not None:
                return hub.whoami_payload
            return {
                "type": "user",
                "name": "tester",
                "orgs": [{"type": "org", "name": "user", "roleInOrg": "write"}],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": hub.role}},
            }

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            if hub.create_status is not None:
                raise HfHubHTTPError("refused", response=httpx.Response(hub.create_status, request=_REQUEST))
            prefix = "datasets/" if kwargs.get("repo_type") == "dataset" else ""
            return RepoUrl(f"https://huggingface.co/{prefix}{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, run_as_future=False, **kwargs):
            def upload():
                time.sleep(hub.upload_seconds)
                folder = Path(folder_path)
                files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                texts = {
                    name: (folder / name).read_text()
                    for name in files
                    if name.endswith((".json", ".yaml", ".md", ".py"))
                }
                audit_folder(folder, token=TOKEN)  # what reaches the Hub passes the audit
                hub.calls.append(
                    (
                        "upload_folder",
                        {"repo_id": repo_id, "folder": str(folder), "files": files, "texts": texts, **kwargs},
                    )
                )
                return "commit"

            return hub.executor.submit(upload) if run_as_future else upload()

        def upload_file(api, *, path_or_fileobj, path_in_repo, repo_id, **kwargs):
            text = Path(path_or_fileobj).read_text()
            hub.calls.append(
                ("upload_file", {"repo_id": repo_id, "path_in_repo": path_in_repo, "text": text, **kwargs})
            )

        def push_to_hub(dataset, repo_id, **kwargs):
            hub.calls.append(("dataset_push_to_hub", {"repo_id": repo_id, "splits": sorted(dataset), **kwargs}))

        monkeypatch.setattr(HfApi, "whoami", whoami)
        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(HfApi, "upload_file", upload_file)
        monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", push_to_hub)
        return self

    def named(self, name: str) -> list[dict]:
        return [kwargs for call, kwargs in self.calls if call == name]

    def names(self) -> list[str]:
        return [call for call, _ in self.calls]


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub().install(monkeypatch)
    yield fake
    fake.executor.shutdown(wait=True)


def _save_model(built, folder: Path, **save) -> None:
    built.model.save_pretrained(folder, **save)
    built.processor.save_pretrained(folder)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def _write_recipe(path: Path, output: Path) -> None:
    path.write_text(
        "# resolved recipe 'demo': TrainingArguments not listed here were left at their defaults\n"
        f"# written from {output}\n"
        + yaml.safe_dump(
            {
                "family": "vit",
                "data_dir": "/data/CheXpert-v1.0-small",
                "data_cache_dir": "~/.cache/chexpert_hf",
                "output_dir": str(output),
                "logging_dir": str(output / "runs" / "Jan01_host"),
                "learning_rate": 1.0e-4,
                "hub_token": TOKEN,
                "hub_model_id": "user/tiny",
                "report_to": ["tensorboard"],
                "fsdp_config": {"activation_checkpointing": False, "cache": str(Path.home() / "fsdp")},
            },
            sort_keys=False,
        )
    )


def make_output_dir(root: Path, family: str = "vit") -> Path:
    """A training output folder holding every kind of file a run writes, the unpublishable ones included."""
    output = root / "outputs" / f"{family}_demo"
    built = tiny_model(family)
    _save_model(built, output)
    (output / "README.md").write_text(CARD_TEXT)
    Image.new("RGB", (8, 8), "white").save(output / "roc.png")
    _write_json(output / "metrics.json", {"mean_auroc": 0.9})
    (output / "metrics.md").write_text("| label | AUROC |\n|---|---|\n| Edema | 0.9 |\n")
    for name in ("train_results.json", "eval_results.json", "all_results.json"):
        _write_json(output / name, {"epoch": 1.0, "eval_mean_auroc": 0.9})
    _write_recipe(output / "recipe.yaml", output)
    state = {
        "best_model_checkpoint": str(output / "checkpoint-2"),
        "best_metric": 0.9,
        "global_step": 2,
        "log_history": [{"loss": 0.6, "step": 1}],
    }
    _write_json(output / "trainer_state.json", state)
    torch.save({"hub_token": TOKEN, "output_dir": str(output)}, output / "training_args.bin")
    runs = output / "runs" / "Jan01_host"
    runs.mkdir(parents=True)
    (runs / "events.out.tfevents.1.host").write_bytes(b"\x00\x01" + str(output).encode())
    (output / "predictions.csv").write_text("path,patient_id,Edema\ntrain/patient00001/study1/x.jpg,patient00001,1\n")
    (output / "validation_labels.csv").write_text("Path,Edema\nvalid/patient64541/study1/view1_frontal.jpg,1\n")
    _write_json(output / "eval-valid" / "scores.json", {"patient00002": 0.3})
    checkpoint = output / "checkpoint-2"
    _save_model(built, checkpoint)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": 2}, checkpoint / name)
    _write_json(checkpoint / "trainer_state.json", state)
    torch.save({"hub_token": TOKEN, "output_dir": str(output)}, checkpoint / "training_args.bin")
    return output


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory) -> Path:
    return make_output_dir(tmp_path_factory.mktemp("run"))


VIT_MODEL_FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]


# --- staging ----------------------------------------------------------------------------------------------------


def test_stage_model_folder_copies_exactly_the_allowlist(output_dir, tmp_path):
    staged = stage_model_folder(output_dir, tmp_path / "stage", token=TOKEN)
    expected = sorted(VIT_MODEL_FILES + PUBLISHED_RESULTS + ["README.md", "recipe.yaml", "trainer_state.json"])
    assert staged == expected
    on_disk = sorted(
        p.relative_to(tmp_path / "stage").as_posix() for p in (tmp_path / "stage").rglob("*") if p.is_file()
    )
    assert on_disk == expected  # no training_args.bin, runs/, predictions.csv, validation_labels.csv, checkpoint-*/
    assert (tmp_path / "stage" / "README.md").read_text() == CARD_TEXT
    assert (tmp_path / "stage" / "model.safetensors").read_bytes() == (output_dir / "model.safetensors").read_bytes()


def test_staged_recipe_and_trainer_state_hold_no_local_path_or_token(output_dir, tmp_path):
    stage_model_folder(output_dir, tmp_path / "stage", token=TOKEN)
    recipe_text = (tmp_path / "stage" / "recipe.yaml").read_text()
    recipe = yaml.safe_load(recipe_text)
    assert "hub_token" not in recipe and TOKEN not in recipe_text
    assert recipe["output_dir"] == output_dir.name and recipe["logging_dir"] == "Jan01_host"
    assert recipe["data_dir"] == "CheXpert-v1.0-small" and recipe["data_cache_dir"] == "chexpert_hf"
    assert recipe["fsdp_config"] == {"activation_checkpointing": False, "cache": "fsdp"}
    assert recipe["learning_rate"] == 1.0e-4 and recipe["hub_model_id"] == "user/tiny"  # the rest is kept
    assert recipe_text.startswith("# resolved recipe 'demo'") and "# written from" not in recipe_text
    state_text = (tmp_path / "stage" / "trainer_state.json").read_text()
    state = json.loads(state_text)
    assert state["best_model_checkpoint"] == "checkpoint-2" and state["log_history"] == [{"loss": 0.6, "step": 1}]
    for text in (recipe_text, state_text):
        assert str(tmp_path.parent) not in text and str(Path.home()) not in text


def test_sharded_weights_are_staged_with_their_index(tmp_path):
    output = tmp_path / "sharded"
    _save_model(tiny_model("vit"), output, max_shard_size="20KB")
    (output / "README.md").write_text(CARD_TEXT)
    index = json.loads((output / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    staged = stage_model_folder(output, tmp_path / "stage")
    assert staged == sorted(
        ["README.md", "config.json", "preprocessor_config.json", "model.safetensors.index.json", *shards]
    )
    (output / shards[-1]).unlink()
    with pytest.raises(PublishError, match=f"missing weight shard.*{shards[-1]}"):
        stage_model_folder(output, tmp_path / "stage2")


@pytest.mark.parametrize(
    "missing, message",
    [
        ("model.safetensors", "holds no model weights"),
        ("config.json", "holds no config.json"),
        ("README.md", "never published without its card"),
    ],
)
def test_a_folder_without_weights_config_or_card_is_refused(tmp_path, missing, message):
    output = tmp_path / "run"
    _save_model(tiny_model("vit"), output)
    (output / "README.md").write_text(CARD_TEXT)
    (output / missing).unlink()
    with pytest.raises(PublishError, match=message) as error:
        stage_model_folder(output, tmp_path / "stage")
    assert str(output) in str(error.value)


def test_the_hybrid_model_is_staged_with_its_code_files(tmp_path):
    output = tmp_path / "hybrid"
    _save_model(tiny_model("resnet_vit"), output)
    (output / "README.md").write_text(CARD_TEXT)
    assert json.loads((output / "config.json").read_text())["auto_map"]
    staged = stage_model_folder(output, tmp_path / "stage")
    assert staged == sorted(VIT_MODEL_FILES + ["README.md", "configuration_resnet_vit.py", "modeling_resnet_vit.py"])
    (output / "modeling_resnet_vit.py").unlink()
    with pytest.raises(PublishError, match="modeling_resnet_vit.py"):
        stage_model_folder(output, tmp_path / "stage2")


def test_stage_checkpoint_folder_keeps_what_resuming_needs_but_never_training_args(output_dir, tmp_path):
    staged = stage_checkpoint_folder(output_dir / "checkpoint-2", tmp_path / "stage", token=TOKEN)
    assert staged == sorted(
        VIT_MODEL_FILES + ["optimizer.pt", "recipe.yaml", "rng_state.pth", "scheduler.pt", "trainer_state.json"]
    )
    state = json.loads((tmp_path / "stage" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == "checkpoint-2"
    assert "hub_token" not in yaml.safe_load((tmp_path / "stage" / "recipe.yaml").read_text())


def test_staging_refuses_a_folder_that_is_not_empty(output_dir, tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "old.txt").write_text("left over")
    with pytest.raises(PublishError, match="not empty"):
        stage_model_folder(output_dir, tmp_path / "stage")


# --- the audit --------------------------------------------------------------------------------------------------


def _clean_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "clean"
    folder.mkdir()
    (folder / "README.md").write_text(CARD_TEXT + "See https://huggingface.co/root/tiny and recipes/demo.yaml.\n")
    _write_json(folder / "config.json", {"id2label": {"0": "Edema"}})
    Image.new("L", (4, 4)).save(folder / "roc.png")
    audit_folder(folder, token=TOKEN)  # a clean folder passes (URLs and relative paths are fine)
    return folder


def test_audit_catches_a_planted_token_without_echoing_it(tmp_path):
    folder = _clean_folder(tmp_path)
    (folder / "metrics.md").write_text(f"pushed with {TOKEN}\n")
    with pytest.raises(PublishError, match=r"metrics\.md: the Hub token") as error:
        audit_folder(folder, token=TOKEN)
    assert TOKEN not in str(error.value)
    other = "hf_" + "Z9y8X7w6V5" * 3 + "QQ"  # any token-shaped string, not only the one in use
    (folder / "metrics.md").write_text(f"token: {other}\n")
    with pytest.raises(PublishError, match=r"metrics\.md: a Hub token \(line 1\)") as error:
        audit_folder(folder, token=TOKEN)
    assert other not in str(error.value)


def test_audit_catches_a_token_inside_a_torch_pickle(tmp_path):
    folder = _clean_folder(tmp_path)
    torch.save({"hub_token": TOKEN}, folder / "training_args.bin")
    with pytest.raises(PublishError, match=r"training_args\.bin: the Hub token"):
        audit_folder(folder, token=TOKEN)


@pytest.mark.parametrize("where", ["forbidden", "home", "tmp", "cwd"])
def test_audit_catches_an_absolute_path_of_this_machine(tmp_path, monkeypatch, where):
    folder = _clean_folder(tmp_path)
    forbidden = Path("/srv/chexpert/run1")
    planted = {
        "forbidden": f"{forbidden}/checkpoint-2",
        "home": f"{Path.home()}/data",
        "tmp": "/tmp/x/run",
        "cwd": f"{Path.cwd()}/outputs/demo",
    }[where]
    _write_json(folder / "all_results.json", {"model": planted})
    with pytest.raises(PublishError, match=r"all_results\.json: an absolute path of this machine"):
        audit_folder(folder, forbidden_paths=[forbidden])


def test_audit_catches_a_patient_identifier(tmp_path):
    folder = _clean_folder(tmp_path)
    (folder / "metrics.md").write_text("worst case:\ntrain/patient12345/study1/view1_frontal.jpg\n")
    with pytest.raises(PublishError, match=r"metrics\.md: a CheXpert patient identifier \(line 2\)"):
        audit_folder(folder)


def test_a_card_with_a_local_path_stops_the_staging(output_dir, tmp_path):
    output = tmp_path / "run"
    _save_model(tiny_model("vit"), output)
    (output / "README.md").write_text(CARD_TEXT + f"trained from {output}/recipe.yaml\n")
    with pytest.raises(PublishError, match=r"README\.md: an absolute path"):
        stage_model_folder(output, tmp_path / "stage")


# --- access -----------------------------------------------------------------------------------------------------


def test_push_output_folder_uploads_the_staged_folder(output_dir, hub):
    url = push_output_folder(output_dir, "user/tiny", private=True, token=TOKEN, commit_message="v1")
    assert url == "https://huggingface.co/user/tiny"
    assert hub.names() == ["whoami", "create_repo", "upload_folder"]  # access is checked before anything else
    assert hub.named("create_repo") == [{"repo_id": "user/tiny", "private": True, "exist_ok": True, "token": TOKEN}]
    upload = hub.named("upload_folder")[0]
    assert upload["files"] == sorted(
        VIT_MODEL_FILES + PUBLISHED_RESULTS + ["README.md", "recipe.yaml", "trainer_state.json"]
    )
    assert upload["repo_id"] == "user/tiny" and upload["commit_message"] == "v1" and upload["token"] == TOKEN
    assert Path(upload["folder"]) != output_dir and not Path(upload["folder"]).exists()  # a staged copy, removed


def test_no_token_stops_before_any_hub_call(output_dir, hub):
    with pytest.raises(HubAccessError, match="hf auth login") as error:
        push_output_folder(output_dir, "user/tiny")
    assert "HF_TOKEN" in str(error.value)
    assert hub.calls == []


def test_a_stored_token_is_used_when_none_is_given(output_dir, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert check_hub_access() == "tester"
    assert hub.named("whoami") == [{"token": TOKEN}]


def test_an_unreachable_hub_stops_before_any_upload(output_dir, hub, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(HfApi, "whoami", _real_whoami)  # the real whoami goes to the endpoint
    with pytest.raises(HubAccessError, match=f"cannot reach the Hub at {endpoint}") as error:
        push_output_folder(output_dir, "user/tiny", token=TOKEN)
    assert TOKEN not in str(error.value)
    assert hub.calls == []


def test_offline_mode_stops_before_any_upload(output_dir, hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "whoami", _real_whoami)
    with pytest.raises(HubAccessError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        push_output_folder(output_dir, "user/tiny", token=TOKEN)
    assert hub.calls == []


class _WhoamiServer(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"{}"

    def do_GET(self):  # noqa: N802 (the handler's name)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub(monkeypatch):
    """A server on 127.0.0.1 answering /api/whoami-v2 as the test sets it, for the real ``whoami``."""
    handler = type("Handler", (_WhoamiServer,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(HfApi, "whoami", _real_whoami)
    yield handler, endpoint
    server.shutdown()
    server.server_close()


def test_a_rejected_token_stops_with_its_own_message(output_dir, hub, local_hub):
    handler, endpoint = local_hub
    handler.status, handler.body = 401, b'{"error": "Invalid credentials in Authorization header"}'
    with pytest.raises(HubAccessError, match=f"the Hub at {endpoint} rejected the token") as error:
        push_output_folder(output_dir, "user/tiny", token=TOKEN)
    assert TOKEN not in str(error.value)
    assert hub.calls == []


def test_a_read_only_token_stops_with_its_own_message(output_dir, hub, local_hub):
    handler, endpoint = local_hub
    handler.body = json.dumps({"name": "reader", "auth": {"accessToken": {"role": "read"}}}).encode()
    with pytest.raises(HubAccessError, match=f"'reader' at {endpoint} is read-only"):
        push_output_folder(output_dir, "user/tiny", token=TOKEN)
    assert hub.calls == []
    handler.body = json.dumps({"name": "writer", "auth": {"accessToken": {"role": "write"}}}).encode()
    assert check_hub_access(TOKEN) == "writer"  # the same server, a write token: accepted


# --- write access to the target repository, proven before training ---------------------------------------------

USER_WRITE = [
    "repo.content.read",
    "repo.access.read",
    "repo.write",
    "inference.serverless.write",
    "collection.read",
    "collection.write",
    "discussion.write",
    "user.webhooks.read",
]  # "write access to your repos"
READ_ONLY = ["repo.content.read", "repo.access.read", "collection.read"]


def whoami_payload(role: str | None, *, scoped=(), orgs=(("chexpert-lab", "write"),), name: str = "alice") -> dict:
    """A whoami-v2 answer as the Hub gives it: ``scoped`` lists ``(entity type, entity name, permissions)`` of a
    fine-grained token, ``orgs`` the user's ``(organization, roleInOrg)``."""
    access = {"displayName": "training", "role": role, "createdAt": "2026-01-05T10:27:03.276Z"}
    if role == "fineGrained":
        access["fineGrained"] = {
            "canReadGatedRepos": True,
            "global": ["discussion.write", "post.write"],
            "scoped": [
                {
                    "entity": {"_id": f"66a1ec32fc25ba6426e21b{index:02x}", "type": kind, "name": entity},
                    "permissions": list(permissions),
                }
                for index, (kind, entity, permissions) in enumerate(scoped)
            ],
        }
    auth = {"type": "access_token", "accessToken": access} if role is not None else {"type": "oauth"}
    return {
        "type": "user",
        "id": "6a61ec32fc25ba6426e21b6f",
        "name": name,
        "fullname": name.title(),
        "isPro": False,
        "canPay": False,
        "avatarUrl": "/avatars/a.svg",
        "auth": auth,
        "orgs": [
            {
                "type": "org",
                "id": f"65f0{index:020x}",
                "name": org,
                "fullname": org,
                "roleInOrg": role_in_org,
                "isEnterprise": False,
            }
            for index, (org, role_in_org) in enumerate(orgs)
        ],
    }


def test_a_fine_grained_token_without_write_on_the_target_organization_is_refused_before_any_work(output_dir, hub):
    hub.whoami_payload = whoami_payload(
        "fineGrained", scoped=[("user", "alice", USER_WRITE), ("org", "chexpert-lab", READ_ONLY)]
    )
    with pytest.raises(HubAccessError) as error:
        check_hub_access(TOKEN, repo_id="chexpert-lab/vit-chexpert")
    message = str(error.value)
    assert "chexpert-lab/vit-chexpert" in message and "repo.write" in message and "'chexpert-lab'" in message
    assert TOKEN not in message
    with pytest.raises(HubAccessError, match="chexpert-lab/vit-chexpert.*lacks the repo.write permission"):
        push_output_folder(output_dir, "chexpert-lab/vit-chexpert", token=TOKEN)
    assert "create_repo" not in hub.names() and "upload_folder" not in hub.names()
    # the same token may push to its owner's namespace, named in full or not
    assert check_hub_access(TOKEN, repo_id="alice/vit-chexpert") == "alice"
    assert check_hub_access(TOKEN, repo_id="vit-chexpert") == "alice"
    assert check_hub_access(TOKEN) == "alice"


def test_a_fine_grained_token_with_write_on_the_organization_is_accepted_there_only(hub):
    hub.whoami_payload = whoami_payload("fineGrained", scoped=[("org", "chexpert-lab", [*READ_ONLY, "repo.write"])])
    assert check_hub_access(TOKEN, repo_id="chexpert-lab/vit-chexpert") == "alice"
    assert check_hub_access(TOKEN) == "alice"  # it can write somewhere
    with pytest.raises(
        HubAccessError,
        match=r"alice/vit-chexpert: it lacks the repo.write permission on 'alice' "
        r"\(it has repo.write on chexpert-lab only\)",
    ):
        check_hub_access(TOKEN, repo_id="vit-chexpert")
    # write on one repository: that repository, of that type, only
    hub.whoami_payload = whoami_payload("fineGrained", scoped=[("model", "chexpert-lab/vit-chexpert", ["repo.write"])])
    assert check_hub_access(TOKEN, repo_id="chexpert-lab/vit-chexpert") == "alice"
    for repo_id, repo_type in (("chexpert-lab/other", "model"), ("chexpert-lab/vit-chexpert", "dataset")):
        with pytest.raises(HubAccessError, match="lacks the repo.write permission"):
            check_hub_access(TOKEN, repo_id=repo_id, repo_type=repo_type)


def test_a_fine_grained_token_that_writes_nowhere_is_refused_even_without_a_repository(hub):
    hub.whoami_payload = whoami_payload("fineGrained", scoped=[("user", "alice", READ_ONLY)])
    with pytest.raises(
        HubAccessError, match="fine-grained token of 'alice' .* has the repo.write permission on no namespace"
    ):
        check_hub_access(TOKEN)


def test_read_and_write_tokens_with_a_target_repository(hub):
    hub.whoami_payload = whoami_payload("read")
    for repo_id in (None, "alice/vit-chexpert", "chexpert-lab/vit-chexpert"):
        with pytest.raises(HubAccessError, match="'alice' .* is read-only"):
            check_hub_access(TOKEN, repo_id=repo_id)
    hub.whoami_payload = whoami_payload("write", orgs=[("chexpert-lab", "write"), ("radiology", "read")])
    for repo_id in (None, "vit-chexpert", "alice/vit-chexpert", "chexpert-lab/vit-chexpert", "Chexpert-Lab/x"):
        assert check_hub_access(TOKEN, repo_id=repo_id) == "alice"
    with pytest.raises(
        HubAccessError,
        match=r"'alice' cannot push to https://huggingface.co/stanfordmlgroup/vit: "
        r"'stanfordmlgroup' is neither their namespace nor one of their "
        r"organizations \(chexpert-lab, radiology\)",
    ):
        check_hub_access(TOKEN, repo_id="stanfordmlgroup/vit")
    with pytest.raises(
        HubAccessError, match="datasets/radiology/chexpert: their role in the organization 'radiology' is 'read'"
    ):
        check_hub_access(TOKEN, repo_id="radiology/chexpert", repo_type="dataset")
    assert "create_repo" not in hub.names()  # a stated role is enough: nothing is created


def test_a_token_whose_role_is_not_stated_must_create_the_repository(hub):
    hub.whoami_payload = whoami_payload(None)
    assert check_hub_access(TOKEN, repo_id="vit-chexpert") == "alice"
    assert hub.named("create_repo") == [
        {"repo_id": "alice/vit-chexpert", "repo_type": "model", "private": True, "exist_ok": False, "token": TOKEN}
    ]
    hub.create_status = 409  # it exists already
    assert check_hub_access(TOKEN, repo_id="chexpert-lab/vit-chexpert") == "alice"
    hub.create_status = 403
    with pytest.raises(
        HubAccessError,
        match=r"cannot push to https://huggingface.co/chexpert-lab/vit-chexpert: the "
        r"Hub refused to create it \(HTTP 403 Forbidden\)",
    ):
        check_hub_access(TOKEN, repo_id="chexpert-lab/vit-chexpert")
    assert check_hub_access(TOKEN) == "alice"  # without a repository, as before


def test_the_trainer_repository_is_the_hub_model_id_or_the_output_folder_name(tmp_path):
    assert trainer_repo_id("chexpert-lab/vit", tmp_path / "run") == "chexpert-lab/vit"
    assert trainer_repo_id(None, tmp_path / "run") == "run"
    assert trainer_repo_id(None, "runs/vit-base/") == "vit-base"


# --- the prepared dataset ---------------------------------------------------------------------------------------


def test_push_prepared_dataset_is_private_with_a_licensed_card(prepared_dir, hub):
    url = push_prepared_dataset(prepared_dir, "user/chexpert", token=TOKEN)
    assert url == "https://huggingface.co/datasets/user/chexpert"
    assert hub.names() == ["whoami", "create_repo", "upload_file", "dataset_push_to_hub"]
    assert hub.named("create_repo") == [
        {"repo_id": "user/chexpert", "repo_type": "dataset", "private": True, "exist_ok": True, "token": TOKEN}
    ]
    pushed = hub.named("dataset_push_to_hub")[0]
    assert pushed["private"] is True and pushed["token"] == TOKEN and pushed["repo_id"] == "user/chexpert"
    assert pushed["splits"] == ["test", "train", "validation"]
    card = hub.named("upload_file")[0]
    assert card["path_in_repo"] == "README.md" and card["repo_type"] == "dataset"
    text = card["text"]
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["license"] == "other" and metadata["license_name"] == "chexpert-research-use-agreement"
    assert metadata["license_link"] == "https://stanfordmlgroup.github.io/competitions/chexpert/"
    info = json.loads((prepared_dir / "prepare_info.json").read_text())
    for split, count in info["images"].items():
        assert f"| {split} | {count:,} |" in text
    assert "private" in text and "Pleural Effusion" in text and "@inproceedings{irvin2019chexpert" in text
    assert info["source"] not in text and str(prepared_dir) not in text and "/tmp/" not in text
    assert not hub.named("upload_folder")  # prepare_info.json and skipped.csv are never uploaded


def test_a_folder_that_is_not_a_prepared_dataset_is_refused(synthetic_root, hub):
    with pytest.raises(PublishError, match=f"{synthetic_root} is not a prepared CheXpert dataset"):
        push_prepared_dataset(synthetic_root, "user/chexpert", token=TOKEN)
    assert hub.calls == []


# --- the Trainer's own pushes -----------------------------------------------------------------------------------


def _push_trainer(output: Path, **training):
    from transformers import ViTImageProcessor

    from chexpert_hf.training.trainer import CheXpertTrainer

    torch.manual_seed(0)
    model = tiny_vit()  # MICRO_VIT, grey 16-px input
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.5])
    settings = dict(
        per_device_train_batch_size=8,
        save_strategy="steps",
        save_steps=2,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-3,
        push_to_hub=True,
        hub_model_id="user/tiny",
        hub_strategy="checkpoint",
        hub_token=TOKEN,
        hub_always_push=True,
    )
    args = cpu_arguments(output, **{**settings, **training})
    return CheXpertTrainer(
        model=model,
        args=args,
        train_dataset=Rows(16),
        processing_class=processor,
        family="vit",
        image_mean=[0.5],
        image_std=[0.5],
        num_channels=1,
    )


def test_the_trainer_pushes_only_staged_audited_folders(tmp_path, monkeypatch):
    hub = FakeHub(upload_seconds=0.3).install(monkeypatch)  # uploads run in the background and take a while
    output = tmp_path / "run"
    output.mkdir()
    _write_recipe(output / "recipe.yaml", output)
    (output / "runs").mkdir()
    (output / "runs" / "events.out.tfevents.1.host").write_bytes(b"\x00" + str(output).encode())
    trainer = _push_trainer(output)
    assert hub.names() == ["whoami", "create_repo"]  # checked and created before training
    trainer.train()  # waits for the checkpoint uploads at the end
    uploads = hub.named("upload_folder")
    assert len(uploads) == 4  # checkpoint-2 and checkpoint-4: the model, and the checkpoint as last-checkpoint
    model_files = sorted(["config.json", "model.safetensors", "preprocessor_config.json", "recipe.yaml"])
    resume_files = sorted(model_files + ["optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json"])
    by_place = {}
    for upload in uploads:
        by_place.setdefault(upload.get("path_in_repo"), []).append(upload["files"])
        assert upload["token"] == TOKEN and upload["repo_id"] == "user/tiny"
        assert "hub_token" not in upload["texts"]["recipe.yaml"]
    assert by_place == {None: [model_files, model_files], "last-checkpoint": [resume_files, resume_files]}
    assert (output / "checkpoint-4" / "training_args.bin").is_file()  # written locally, never uploaded

    (output / "README.md").write_text(CARD_TEXT)  # the training job writes our card before it pushes
    trainer.push_to_hub(commit_message="End of training")
    final = hub.named("upload_folder")[-1]
    assert final["files"] == sorted(model_files + ["README.md"])
    assert final["texts"]["README.md"] == CARD_TEXT and (output / "README.md").read_text() == CARD_TEXT
    assert final["commit_message"] == "End of training" and final.get("path_in_repo") is None
    assert (output / "training_args.bin").is_file() and (output / "runs").is_dir()  # present, not uploaded
    assert not list(output.glob(".hub-staging-*"))  # every staging folder is gone once its upload finished


def test_a_trainer_that_will_push_stops_at_once_without_a_token(tmp_path, hub):
    with pytest.raises(HubAccessError, match="hf auth login"):
        _push_trainer(tmp_path / "run", hub_token=None)
    assert hub.calls == []


def test_the_trainer_pushes_no_card_without_ours(tmp_path, hub):
    trainer = _push_trainer(tmp_path / "run", hub_strategy="end")
    trainer.train()
    assert not hub.named("upload_folder")  # hub_strategy end: nothing during training
    trainer.create_model_card(model_name="tiny")  # the Trainer's generic card is never written
    with pytest.raises(PublishError, match="never published without its card"):
        trainer.push_to_hub()  # the Trainer's generic card is not written in its place
    assert not (tmp_path / "run" / "README.md").exists() and not hub.named("upload_folder")


# --- the training job -------------------------------------------------------------------------------------------


def _job_recipe(tmp_path: Path, data_dir: Path, **fields) -> Path:
    values = {
        "family": "vit",
        "from_scratch": True,
        "image_size": 32,
        "data_dir": str(data_dir),
        "config_overrides": tiny_config("vit", **MICRO_VIT),
        "data_cache_dir": str(tmp_path / "cache"),
        "prepare_image_size": 64,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "max_steps": 2,
        "eval_strategy": "no",
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "output_dir": str(tmp_path / "out"),
        "push_to_hub": True,
        "hub_model_id": "user/tiny-chexpert",
        **fields,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_the_training_job_publishes_its_card_roc_and_metrics(tmp_path, synthetic_root, hub, monkeypatch):
    from huggingface_hub import ModelCard

    from chexpert_hf.hub.model_card import card_metrics
    from chexpert_hf.training.train import main as train_main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert train_main(["--config", str(_job_recipe(tmp_path, synthetic_root))]) == 0
    final = hub.named("upload_folder")[-1]
    assert final["repo_id"] == "user/tiny-chexpert"
    assert final["files"] == sorted(
        [
            "README.md",
            "all_results.json",
            "calibration.png",
            "config.json",
            "eval_results.json",
            "metrics.json",
            "metrics.md",
            "model.safetensors",
            "preprocessor_config.json",
            "recipe.yaml",
            "roc.png",
            "subgroups.json",  # aggregates per group, never a patient or an image
            "subgroups.md",
            "subgroups.png",
            "train_results.json",
            "trainer_state.json",
        ]
    )
    card = final["texts"]["README.md"]
    assert "user/tiny-chexpert" in card and str(tmp_path) not in card  # the usage snippets name the repo
    metrics = json.loads(final["texts"]["metrics.json"])
    (tmp_path / "card.md").write_text(card)
    assert card_metrics(ModelCard.load(tmp_path / "card.md"))["mean_auroc"] == metrics["mean_auroc"]
    assert str(tmp_path) not in final["texts"]["recipe.yaml"] and TOKEN not in final["texts"]["recipe.yaml"]


def test_the_training_job_stops_before_any_work_without_a_token(tmp_path, synthetic_root, hub, capsys):
    from chexpert_hf.training.train import main as train_main

    assert train_main(["--config", str(_job_recipe(tmp_path, synthetic_root))]) == 2
    assert "hf auth login" in capsys.readouterr().err
    assert hub.calls == [] and not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_the_training_job_stops_before_any_work_when_the_token_cannot_write_to_the_target(
    tmp_path, synthetic_root, hub, capsys, monkeypatch
):
    from chexpert_hf.training.train import main as train_main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.whoami_payload = whoami_payload(
        "fineGrained", scoped=[("user", "alice", USER_WRITE), ("org", "chexpert-lab", READ_ONLY)]
    )
    recipe = _job_recipe(tmp_path, synthetic_root, hub_model_id="chexpert-lab/tiny-chexpert")
    assert train_main(["--config", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert "chexpert-lab/tiny-chexpert" in error and "repo.write" in error and TOKEN not in error
    assert hub.names() == ["whoami"] and not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
