"""Exchange stores that a site and the centre both reach with outbound connections only.

- `MlflowArtifactStore` (the deployed default): the MLflow tracking server's
  artifact proxy (`mlflow server --serve-artifacts`), over its REST endpoints
  `/api/2.0/mlflow-artifacts/artifacts/<path>`. Both sides already connect to
  the tracking server, so no extra service or firewall rule is needed.
  Credentials come from the usual MLflow variables (`MLFLOW_TRACKING_TOKEN`,
  `MLFLOW_TRACKING_USERNAME`/`PASSWORD`).
- `FsspecStore`: any fsspec file system (`s3://bucket/prefix`,
  `gcs://...`, `file:///...`), with the backend's own credentials.

`open_store` builds one from a URI.
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlparse

from medfed.sites.exchange_store import ExchangeStore, LocalFolderStore

logger = logging.getLogger(__name__)

ARTIFACTS_ENDPOINT = "/api/2.0/mlflow-artifacts/artifacts"
DEFAULT_EXCHANGE_ROOT = "medfed-exchange"
# Seconds one HTTP request to the artifact proxy may take before it fails.
REQUEST_TIMEOUT_S = 120


def check_key(key: str) -> PurePosixPath:
    """Reject a key that is absolute, climbs with '..' or is empty."""
    relative = PurePosixPath(key)
    if not key or relative.is_absolute() or ".." in relative.parts or "\\" in key:
        raise ValueError(f"exchange key {key!r} must be a relative POSIX path without '..'")
    return relative


class MlflowArtifactStore:
    """Exchange store on the MLflow tracking server's artifact proxy."""

    def __init__(self, tracking_uri: str, root: str = DEFAULT_EXCHANGE_ROOT) -> None:
        parsed = urlparse(tracking_uri)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(
                f"the MLflow artifact store needs an http(s) tracking URI, got {tracking_uri!r}; "
                "point mlflow_tracking_uri at the tracking server, such as http://mlflow.example.org:5000"
            )
        self.tracking_uri = tracking_uri.rstrip("/")
        self.root = str(check_key(root))

    @property
    def uri(self) -> str:
        parsed = urlparse(self.tracking_uri)
        return f"mlflow-artifacts://{parsed.netloc}/{self.root}"

    def _endpoint(self, key: str) -> str:
        path = posixpath.join(self.root, str(check_key(key)))
        return f"{ARTIFACTS_ENDPOINT}/{quote(path)}"

    def _request(self, endpoint: str, method: str, **kwargs):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        creds = get_default_host_creds(self.tracking_uri)
        return http_request(creds, endpoint, method, timeout=REQUEST_TIMEOUT_S, max_retries=2, **kwargs)

    def put(self, key: str, data: bytes) -> None:
        response = self._request(
            self._endpoint(key), "PUT", data=data, extra_headers={"Content-Type": "application/octet-stream"}
        )
        if response.status_code != 200:
            raise OSError(
                f"upload of exchange key {key!r} to {self.uri} failed: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )

    def get(self, key: str) -> bytes:
        response = self._request(self._endpoint(key), "GET")
        if response.status_code == 404:
            raise FileNotFoundError(f"exchange key {key!r} not found in {self.uri}")
        if response.status_code != 200:
            raise OSError(
                f"download of exchange key {key!r} from {self.uri} failed: HTTP {response.status_code}"
            )
        return response.content

    def exists(self, key: str) -> bool:
        path = posixpath.join(self.root, str(check_key(key)))
        response = self._request(ARTIFACTS_ENDPOINT, "GET", params={"path": posixpath.dirname(path)})
        if response.status_code != 200:
            return False
        return any(f.get("path") == posixpath.basename(path) and not f.get("is_dir")
                   for f in response.json().get("files", []))

    def list(self, prefix: str) -> list[str]:
        """List the keys under `prefix`, recursively, sorted."""
        keys: list[str] = []
        pending = [str(check_key(prefix))]
        while pending:
            folder = pending.pop()
            response = self._request(
                ARTIFACTS_ENDPOINT, "GET", params={"path": posixpath.join(self.root, folder)}
            )
            if response.status_code != 200:
                raise OSError(f"listing {folder!r} in {self.uri} failed: HTTP {response.status_code}")
            for info in response.json().get("files", []):
                child = posixpath.join(folder, info["path"])
                (pending if info.get("is_dir") else keys).append(child)
        return sorted(keys)


class FsspecStore:
    """Exchange store on an fsspec file system, such as `s3://bucket/prefix`."""

    def __init__(self, url: str, **storage_options: object) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **storage_options)

    @property
    def uri(self) -> str:
        return self.url

    def _path(self, key: str) -> str:
        return posixpath.join(self.base, str(check_key(key)))

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        # Write the payload under a temporary name, then move it, so that a reader
        # never sees a partial file (object stores make the move a copy).
        partial = path + ".partial"
        self.fs.pipe_file(partial, data)
        self.fs.mv(partial, path)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not self.fs.exists(path):
            raise FileNotFoundError(f"exchange key {key!r} not found in {self.url}")
        return self.fs.cat_file(path)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))


def open_store(uri: str | None, *, tracking_uri: str | None = None) -> ExchangeStore:
    """Build the exchange store a URI names.

    `None` or `mlflow-artifacts` selects the artifact proxy of `tracking_uri`,
    `mlflow-artifacts:/<root>` the same with another root folder, a plain
    folder path a `LocalFolderStore`, and any other URL with a scheme an
    `FsspecStore`.
    """
    if uri is None or uri == "mlflow-artifacts" or uri.startswith("mlflow-artifacts:"):
        if tracking_uri is None:
            raise ValueError("the MLflow artifact exchange store needs mlflow_tracking_uri to be set")
        root = uri.partition(":")[2].strip("/") if uri and ":" in uri else DEFAULT_EXCHANGE_ROOT
        return MlflowArtifactStore(tracking_uri, root or DEFAULT_EXCHANGE_ROOT)
    if "://" in uri:
        return FsspecStore(uri)
    return LocalFolderStore(Path(uri))


def store_uri(store: ExchangeStore) -> str:
    """Describe where a store writes, for the egress ledger's destination field."""
    uri = getattr(store, "uri", None)
    if isinstance(uri, str):
        return uri
    root = getattr(store, "root", None)
    return Path(root).as_uri() if isinstance(root, Path) else type(store).__name__
