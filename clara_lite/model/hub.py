"""Hugging Face Hub ids wherever a model path is accepted, the official CLaRa releases, and the token.

Why here: a CLaRa checkpoint on the Hub is a *subfolder* of a repository (the official layout is
``apple/CLaRa-7B-{Base,Instruct,E2E}/compression-{16,128}``), and only its few files are needed, so
``huggingface_hub.snapshot_download`` fetches exactly those (``allow_patterns``). The Hub's cache
makes a second load offline-capable (``HF_HUB_OFFLINE=1`` reads the cache only).

Gated base models (the official releases name ``mistralai/Mistral-7B-Instruct-v0.2``) need a token:
:func:`hub_token` takes ``HF_TOKEN`` from the environment, then from Colab's Secrets
(``google.colab.userdata``), then from ``hf auth login``'s file. The token is passed to the Hub
client and never logged, printed or written.

For example::

    local = resolve_model_path("apple/CLaRa-7B-Instruct", subfolder="compression-16")
    official_id("e2e", 128)
    # -> ('apple/CLaRa-7B-E2E', 'compression-128')
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from ..core.errors import ClaraError
from ..core.layout import (
    ADAPTERS_DIR,
    ADDED_TOKENS_FILE,
    CONFIG_FILE,
    MANIFEST,
    TOKENIZER_DIR,
    UPSTREAM_ADAPTERS,
    UPSTREAM_CONFIG,
    UPSTREAM_LAYERS,
)
from ..core.secrets import redact

log = logging.getLogger(__name__)

TOKEN_NAME = "HF_TOKEN"  # the variable, and the Colab Secret's name
_TOKEN_ENV = (TOKEN_NAME, "HUGGING_FACE_HUB_TOKEN")
_HUB_PATH = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(/[\w.\-]+)*$")  # org/name[/subfolder...]

OFFICIAL_ORG = "apple"
OFFICIAL_VARIANTS = {"base": "Base", "instruct": "Instruct", "e2e": "E2E"}  # stage1, stage1+2, end to end
OFFICIAL_COMPRESSIONS = (16, 128)
# a CLaRa model's files: ours (clara_config.json, adapters/, ...) or upstream's (config.json, *.pth)
MODEL_FILES = (CONFIG_FILE, ADDED_TOKENS_FILE, MANIFEST, f"{ADAPTERS_DIR}/*", f"{TOKENIZER_DIR}/*",
               UPSTREAM_CONFIG, UPSTREAM_ADAPTERS, UPSTREAM_LAYERS)


class HubError(ClaraError, OSError):
    """A Hub model that cannot be fetched; the message says why and what to do (never the token)."""
    code = "hub"


def official_id(variant: str, compression: int) -> tuple[str, str]:
    """``("instruct", 16)`` -> ``("apple/CLaRa-7B-Instruct", "compression-16")``."""
    key = str(variant).strip().lower()
    if key not in OFFICIAL_VARIANTS:
        raise ValueError(f"Unknown official CLaRa model {variant!r}: choose {', '.join(OFFICIAL_VARIANTS)}")
    if int(compression) not in OFFICIAL_COMPRESSIONS:
        raise ValueError(f"Official CLaRa models come with compression {OFFICIAL_COMPRESSIONS}, not {compression!r}")
    return f"{OFFICIAL_ORG}/CLaRa-7B-{OFFICIAL_VARIANTS[key]}", f"compression-{int(compression)}"


def split_hub_path(name: str, subfolder: str | None = None) -> tuple[str, str | None] | None:
    """``("org/name/sub", None)`` or ``("org/name", "sub")`` -> ``("org/name", "sub")``; None for anything
    that is a local path (existing, absolute, or starting with ``.``/``~``) or not shaped like a Hub id."""
    text = str(name)
    if os.path.exists(text) or text.startswith((".", "/", "~")) or not _HUB_PATH.match(text):
        return None
    org, repo, *rest = text.split("/")
    parts = [*rest, *([subfolder.strip("/")] if subfolder else [])]
    return f"{org}/{repo}", "/".join(parts) or None


def hub_token() -> str | None:
    """``HF_TOKEN`` from the environment, else Colab's Secrets, else ``hf auth login``'s file; None if none."""
    for var in _TOKEN_ENV:
        if os.environ.get(var):
            return os.environ[var]
    if "google.colab" in sys.modules:
        try:
            from google.colab import userdata

            token = userdata.get(TOKEN_NAME)
            if token:
                return token
        except Exception as err:  # SecretNotFoundError, NotebookAccessError (access not granted), ...
            log.info("No %s from Colab Secrets (%s): gated models will not download", TOKEN_NAME, type(err).__name__)
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # an unreadable token file only costs us the token
        return None


def token_help(repo_id: str) -> str:
    """What to do when ``repo_id`` is gated or private (the same words for models and base models)."""
    return (f"{repo_id} is gated or private: accept its license at https://huggingface.co/{repo_id} with your "
            f"Hugging Face account, then give clara_lite a token with read access: in Colab the key icon "
            f"(Secrets) -> add {TOKEN_NAME} and allow this notebook; elsewhere `export {TOKEN_NAME}=...` "
            "or `hf auth login`.")


def download(repo_id: str, subfolder: str | None = None, patterns=MODEL_FILES, revision: str | None = None) -> Path:
    """The files matching ``patterns`` under ``subfolder`` of ``repo_id``, from the cache or the Hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    where = f"{repo_id}" + (f" (subfolder {subfolder})" if subfolder else "")
    try:
        root = snapshot_download(repo_id, allow_patterns=[prefix + p for p in patterns], token=hub_token(),
                                 revision=revision)
    except GatedRepoError:
        raise HubError(token_help(repo_id)) from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id} is not on the Hugging Face Hub (or is private: {token_help(repo_id)})") from None
    except LocalEntryNotFoundError as err:
        raise HubError(f"{where} is not in the Hugging Face cache and the Hub cannot be reached "
                       f"({redact(str(err), hub_token())}). Connect to the internet once, or pass a local "
                       "folder.") from None
    except Exception as err:  # an HTTP error may echo the request, token included: never shown as it is
        raise HubError(f"{where}: the Hugging Face Hub failed ({type(err).__name__}: "
                       f"{redact(str(err), hub_token())}). Check the name and your token, then try again.") from None
    path = Path(root) / (subfolder or "")
    if not ((path / CONFIG_FILE).is_file() or (path / UPSTREAM_ADAPTERS).is_file()):
        found = sorted({p.parent.relative_to(root).as_posix() for p in Path(root).rglob(UPSTREAM_ADAPTERS)}
                       | {p.parent.relative_to(root).as_posix() for p in Path(root).rglob(CONFIG_FILE)})
        hint = f" Subfolders with a model: {', '.join(found)}." if found else ""
        raise HubError(f"{where} holds no CLaRa model files.{hint} Official releases need subfolder="
                       f"'compression-16' or 'compression-128'.")
    log.info("%s -> %s", where, path)
    return path


def resolve_model_path(name_or_path, subfolder: str | None = None, *, revision: str | None = None) -> Path:
    """A local folder (``subfolder`` inside it) as is; a Hub id (``org/name[/sub]``) downloaded (only the
    model's files) into the Hugging Face cache."""
    hub = split_hub_path(str(name_or_path), subfolder)
    if hub is None:
        return Path(name_or_path) / (subfolder or "")
    try:
        return download(*hub, revision=revision)
    except HubError as err:
        raise HubError(f"{name_or_path} is no local folder; as a Hugging Face id: {err}") from None
