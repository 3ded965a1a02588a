"""Fetch a GGUF from Hugging Face: pick it by quant or exact name, download with resume, reuse the cache.

huggingface_hub does the transfer (progress bar, resume of partial files,
the shared cache, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE); this module picks
the file and turns the hub's exceptions into one-line `HubError`s.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import FuroshikiError

SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)


class HubError(FuroshikiError):
    pass


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    revision: str       # the commit the file was taken from
    path: Path

    @property
    def source(self) -> str:
        return f"hf:{self.repo}/{self.filename}@{self.revision}"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def pick_file(files: list[str], quant: str | None, exact: str | None, repo: str) -> str:
    """Choose the GGUF to download; refuse split GGUFs and ambiguity with a one-line reason."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    if exact:
        if exact not in files:
            raise HubError(f"{repo} has no file {exact!r}; GGUF files there: {', '.join(ggufs) or 'none'}")
        chosen = [exact]
    else:
        if not ggufs:
            raise HubError(f"{repo} has no GGUF files")
        if not quant:
            raise HubError(f"{repo} has {len(ggufs)} GGUF files; choose one with --quant or --file: "
                           + ", ".join(ggufs))
        chosen = [f for f in ggufs if _quant_of(f) == quant.upper()]
        if not chosen:
            quants = sorted({_quant_of(f) for f in ggufs} - {""})
            raise HubError(f"{repo} has no {quant} GGUF; available: {', '.join(quants) or ', '.join(ggufs)}")
    split = [f for f in chosen if SPLIT.search(f)]
    if split:
        parts = SPLIT.search(split[0]).group(2)
        raise HubError(f"{split[0]} is split into {int(parts)} parts; furoshiki needs one file: merge them with "
                       "`llama-gguf-split --merge` and build with --model, or pick a single-file quant")
    if len(chosen) > 1:
        raise HubError(f"{quant} matches several files in {repo}: {', '.join(chosen)}; choose one with --file")
    return chosen[0]


QUANT = re.compile(r"(?:^|[-_.])(I?Q\d+(?:_[A-Z0-9]+)*|F16|BF16|F32)$", re.I)


def _quant_of(filename: str) -> str:
    """'Llama-3.2-1B-Instruct-Q4_K_M.gguf' -> 'Q4_K_M' (split suffixes ignored)."""
    stem = SPLIT.sub("", Path(filename).name)
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    m = QUANT.search(stem)
    return m.group(1).upper() if m else ""


def _cached_files(repo: str, revision: str | None) -> tuple[list[str], str]:
    from huggingface_hub import scan_cache_dir

    try:
        for cached in scan_cache_dir().repos:
            if cached.repo_id == repo and cached.repo_type == "model":
                for rev in sorted(cached.revisions, key=lambda r: r.last_modified, reverse=True):
                    if revision in (None, rev.commit_hash) or revision in rev.refs:
                        return [str(f.file_path.relative_to(rev.snapshot_path)) for f in rev.files], rev.commit_hash
    except Exception:  # noqa: BLE001 - an empty or odd cache is "not cached"
        pass
    raise HubError(f"HF_HUB_OFFLINE is set and {repo} is not in the Hugging Face cache; "
                   "download it once with network first")


def download(repo: str, quant: str | None = None, filename: str | None = None,
             revision: str | None = None) -> HubFile:
    """Download (or reuse from cache) one GGUF of `repo`."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import errors as hf_errors

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise HubError(f"{repo!r} is not a Hugging Face repository id (expected owner/name)")
    try:
        if _offline():
            files, commit = _cached_files(repo, revision)
        else:
            info = HfApi().model_info(repo, revision=revision)
            files, commit = [s.rfilename for s in info.siblings or []], info.sha
        chosen = pick_file(files, quant, filename, repo)
        path = hf_hub_download(repo, chosen, revision=commit or revision)
    except HubError:
        raise
    except hf_errors.GatedRepoError:
        raise HubError(f"{repo} is gated: accept its terms on Hugging Face, then set HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        raise HubError(f"{repo} was not found on Hugging Face (a private repo needs HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r}") from None
    except hf_errors.EntryNotFoundError:
        raise HubError(f"{repo} has no file {filename or quant!r} at that revision") from None
    except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError):
        raise HubError(f"cannot reach Hugging Face and {repo} is not fully cached; check the network, "
                       "or build with HF_HUB_OFFLINE=1 from a cache filled earlier") from None
    except hf_errors.HfHubHTTPError as exc:
        raise HubError(f"Hugging Face refused the request: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 - transport errors come from whichever HTTP client the hub uses
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise HubError(f"cannot download from Hugging Face ({exc.__class__.__name__}: {detail}); check the "
                       "network, or build with HF_HUB_OFFLINE=1 from a cache filled earlier") from None
    path = Path(path)
    revision_from_path = path.parent.name if path.parent.parent.name == "snapshots" else (commit or "")
    return HubFile(repo=repo, filename=chosen, revision=revision_from_path, path=path)
