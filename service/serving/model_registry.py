"""`attrx serve --bundle models:/NAME/VERSION` (or `models:/NAME@ALIAS`): a bundle registered in an
MLflow model registry (`attrx export --register NAME`), downloaded once into a local cache and served
from there.

The registry is MLflow's tracking server at MLFLOW_TRACKING_URI (or MLFLOW_REGISTRY_URI). The cache is
ATTRX_MODEL_CACHE (default ~/.cache/attrx/models), one folder per name and version: a version is
immutable, so a cached one is served again without asking the registry for its files; an alias is
resolved to its version on every start. A download goes to a temporary folder first and is renamed
into place whole, so a start killed midway leaves no half bundle behind. The bundle's own file hashes
are checked when it loads, as for any bundle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "models:/"


class RegistryError(ValueError):
    pass


def is_registry_uri(bundle: str) -> bool:
    return bundle.startswith(PREFIX)


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attrx" / "models"
    return Path(os.environ.get("ATTRX_MODEL_CACHE") or default)


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME/VERSION -> (NAME, VERSION, None); models:/NAME@ALIAS -> (NAME, None, ALIAS)."""
    rest = uri[len(PREFIX):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise RegistryError(f"{uri}: a registered bundle is models:/NAME/VERSION or models:/NAME@ALIAS")


def resolve(uri: str) -> Path:
    """The local folder of the registered bundle, downloaded into the cache if it is not there yet."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise RegistryError(f"{uri}: serving from an MLflow registry needs pip install 'attrx[mlflow]'") from None
    name, version, alias = parse(uri)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as e:
        raise RegistryError(f"{uri}: {e.message} (registry {mlflow.get_registry_uri()})") from None
    dest = cache_root() / name / str(mv.version)
    if (dest / "manifest.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp)))
        if not (got / "manifest.json").is_file():
            raise RegistryError(f"{uri}: version {mv.version}'s files ({mv.source}) are not an attrx bundle")
        try:
            got.rename(dest)
        except OSError:  # another process put it there first: theirs is the same version
            if not (dest / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def with_local_bundle(settings):
    """Settings whose bundle is a local folder: a models:/ URI is resolved (and downloaded) here."""
    if not is_registry_uri(settings.bundle):
        return settings
    path = resolve(settings.bundle)
    print(f"attrx: {settings.bundle} is version {path.name} of {path.parent.name}, served from {path}", flush=True)
    return settings.model_copy(update={"bundle": str(path)})
