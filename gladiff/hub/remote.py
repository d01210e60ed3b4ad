"""The Hugging Face Hub side of model folders, through ``huggingface_hub``: a Hub id becomes a local
folder (downloaded into the Hub's cache, or found there offline), and a folder is published.

A local folder always wins and never touches the network: ``resolve`` returns it as it is. Only a
name that is not a local path and looks like ``owner/name`` is looked up on the Hub. With
``HF_HUB_OFFLINE=1`` the Hub's cache answers without the network.
"""
from __future__ import annotations

import re
from pathlib import Path

from gladiff.errors import MissingDependencyError, StorageError, UsageError

from .folder import CARD_NAME, CONFIG_NAME, FILES, WEIGHTS_NAME

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with the Hub's characters (not ``./x``, ``/abs``, ``a/b/c`` or ``~/x``)."""
    return bool(_HUB_ID.match(str(name))) and ".." not in str(name)


def is_hub_id(name: str | Path) -> bool:
    """Whether ``name`` means a Hub repo rather than a local path: shaped like ``owner/name``, and
    neither it nor its first part (``runs`` of ``runs/x``) exists here."""
    name = str(name)
    return looks_like_hub_id(name) and not Path(name).exists() and not Path(name.split("/")[0]).is_dir()


def _hub():
    try:
        import huggingface_hub
    except ImportError as err:
        raise MissingDependencyError("Hub ids need huggingface_hub, which is not installed: "
                                     "pip install 'gladiff[hub]' (local folders work without it)") from err
    return huggingface_hub


def resolve(name_or_path: str | Path, revision: str | None = None) -> Path:
    """The local folder of a model: ``name_or_path`` itself when it exists here, else the Hub repo
    ``owner/name`` (at ``revision``) downloaded into the Hub's cache (only the model's three files).
    A path that does not exist and is no Hub id, or a failed download, is one clear error."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(f"model folder {name} does not exist (and it is not a Hugging Face Hub id "
                                "like owner/name)")
    hub = _hub()
    try:
        return Path(hub.snapshot_download(name, revision=revision, allow_patterns=list(FILES),
                                          library_name="gladiff"))
    except Exception as err:  # the Hub client's errors (HTTP, offline cache miss, gated, not found)
        reason = _reason(err)
        raise StorageError(f"{name} is not a local folder, and getting it from the Hugging Face Hub failed: "
                           f"{reason}; check the id and the network, or pass a local folder "
                           f"(HF_HUB_OFFLINE=1 uses the Hub's cache only)") from err


def _reason(err: BaseException) -> str:
    names = {"RepositoryNotFoundError": "no such model repository (or it is private and no token is set)",
             "RevisionNotFoundError": "no such revision",
             "GatedRepoError": "the repository is gated: accept its terms and log in",
             "LocalEntryNotFoundError": "it is not in the local cache and the Hub cannot be reached"}
    for klass in type(err).__mro__:
        if klass.__name__ in names:
            return names[klass.__name__]
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload gladiff model") -> str:
    """Upload model folder ``folder`` (its three files) to Hub repo ``repo_id``, creating the repo if
    needed; returns the repo's URL. Needs a token (``huggingface-cli login`` or ``HF_TOKEN``)."""
    from .folder import read_config

    read_config(folder)  # only a complete, checked folder is published
    if not looks_like_hub_id(repo_id):
        raise UsageError(f"--push-to-hub needs a Hub repo id like owner/name, got {repo_id!r}")
    hub = _hub()
    api = hub.HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME,
                                                                                     CARD_NAME],
                          commit_message=commit_message, repo_type="model")
    except Exception as err:
        raise StorageError(f"uploading {folder} to the Hugging Face Hub as {repo_id} failed: {_reason(err)} "
                           "(log in with huggingface-cli login or set HF_TOKEN)") from err
    return str(url)
