"""segflow's settings, read once from the environment (prefix ``SEGFLOW_``).

Every part of segflow reads its locations from :func:`get_settings`, so one variable
(``SEGFLOW_HOME``) moves everything: the MLflow database and artifacts, Prefect's home, caches.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where segflow keeps its state, and how it reaches MLflow and Prefect.

    Attributes:
        home: root of segflow's local state (``SEGFLOW_HOME``, default ``./.segflow``).
        mlflow_tracking_uri: MLflow tracking URI; ``MLFLOW_TRACKING_URI`` wins, else a sqlite
            file ``<home>/mlflow.db``.
        prefect_home: Prefect's home; ``PREFECT_HOME`` wins, else ``<home>/prefect``.
        prefect_api_url: a real Prefect server, when set (``PREFECT_API_URL``).
        max_extract_bytes: refuse to extract archives that expand beyond this many bytes.
        max_compression_ratio: refuse archive members that expand more than this ratio.
        s3_endpoint_url: S3-protocol endpoint for ``s3://`` inputs and outputs (MinIO, Ceph…);
            ``SEGFLOW_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``, else
            ``MLFLOW_S3_ENDPOINT_URL``; unset means AWS itself.
        s3_region: the bucket region (``AWS_DEFAULT_REGION`` or ``AWS_REGION``).
        s3_access_key_id: ``AWS_ACCESS_KEY_ID``; unset lets boto3 find credentials itself
            (profile, instance role).
        s3_secret_access_key: ``AWS_SECRET_ACCESS_KEY`` (a secret: never printed or logged).
        stop_deadline_seconds: a command still running this long after its first SIGTERM or
            SIGINT exits anyway (``SEGFLOW_STOP_DEADLINE_SECONDS``; 9 s: a stop signal ends
            every command within 10 s, and a clean stop takes a few).
    """

    model_config = SettingsConfigDict(env_prefix="SEGFLOW_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".segflow"))
    mlflow_tracking_uri: str | None = Field(default=None, validation_alias="MLFLOW_TRACKING_URI")
    prefect_home: Path | None = Field(default=None, validation_alias="PREFECT_HOME")
    prefect_api_url: str | None = Field(default=None, validation_alias="PREFECT_API_URL")
    max_extract_bytes: int = Field(default=50 * 1024**3, ge=1)
    max_compression_ratio: float = Field(default=1000.0, gt=1)
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "SEGFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"
        ),
    )
    s3_region: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION")
    )
    s3_access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    s3_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias="AWS_SECRET_ACCESS_KEY"
    )
    stop_deadline_seconds: float = Field(default=9.0, gt=0)

    @property
    def home_dir(self) -> Path:
        """Absolute path of ``home``."""
        return self.home.expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force (absolute sqlite URI by default: four slashes)."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def artifacts_dir(self) -> Path:
        """Where the default local MLflow store keeps artifacts."""
        return self.home_dir / "mlartifacts"

    @property
    def staging_dir(self) -> Path:
        """Local copies of ``s3://`` inputs, and outputs (with their ledgers) before upload."""
        return self.home_dir / "staging"

    @property
    def prefect_home_dir(self) -> Path:
        """Prefect's home folder in force."""
        return (self.prefect_home or self.home_dir / "prefect").expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (cached; call ``get_settings.cache_clear()`` in tests)."""
    return Settings()


def apply_environment(settings: Settings | None = None) -> Settings:
    """Export the settings to the variables Prefect and MLflow read, without overriding the user.

    Sets ``PREFECT_HOME`` (under ``SEGFLOW_HOME`` unless already set), turns Prefect's analytics
    off, gives its temporary API server 120 s to start (20 by default), and sets
    ``MLFLOW_TRACKING_URI``. Call it before importing Prefect.

    Args:
        settings: the settings to apply; the process-wide ones by default.

    Returns:
        The settings that were applied.
    """
    settings = settings or get_settings()
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home_dir))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")
    # Prefect gives its temporary API server 20 s; on a machine busy training (2 cores) its
    # start-up (database migrations) takes longer and every command failed.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    return settings
