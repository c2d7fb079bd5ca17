"""One settings object, built at start-up from (lowest to highest precedence):
defaults < YAML config file < ``TAMSOAT_*`` environment variables < command-line flags.

Library code never reads the environment; it takes the typed pieces it needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DEFAULTS = Path(__file__).resolve().parents[1] / "defaults"
AE_TITLE_PATTERN = r"^[ -\[\]-~]{1,16}$"  # printable ASCII without backslash, 1-16 chars


class Destination(BaseModel):
    """An outbound DICOM peer (PACS) that receives our results."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    host: str
    port: int = Field(ge=1, le=65535)
    storage_commitment: bool = Field(default=False, description="request storage commitment after sending; "
                                     "a result stays in the outbox until the PACS commits it")
    tls: bool = Field(default=False, description="DICOM TLS to this peer (client certificate: dicom.tls)")

    @field_validator("ae_title")
    @classmethod
    def _strip(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("AE title must not be blank")
        return v.strip()


class AllowedPeer(BaseModel):
    """A calling AE title allowed to associate, together with its address."""

    ae_title: str = Field(pattern=AE_TITLE_PATTERN)
    host: str


class DicomTLS(BaseModel):
    """DICOM TLS (PS3.15 Annex B): our certificate and key; peers are verified against ``ca_file``."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = Field(default=None, description="CA bundle; when set, peers must present a "
                                 "certificate it signed (the SCP then requires client certificates)")


class DicomSettings(BaseModel):
    ae_title: str = Field(default="TAMSOAT", pattern=AE_TITLE_PATTERN)
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535, description="0: any free port (tests)")
    max_pdu: int = Field(default=262144, ge=4096)
    max_associations: int = Field(default=16, ge=1)
    max_dataset_bytes: int = Field(default=2 << 30, ge=1 << 20, description="a C-STORE data set larger than "
                                   "this is refused with 0xA700 (it is read to its end and dropped)")
    extra_ae_titles: list[Annotated[str, Field(pattern=AE_TITLE_PATTERN)]] = Field(
        default_factory=list, description="further called AE titles the SCP answers to besides ae_title "
        "(routing rules may tell them apart); any other called AE title is rejected"
    )
    allowed_peers: list[AllowedPeer] = Field(
        default_factory=list, description="empty: accept any calling AE (log a warning at start)"
    )
    tls: DicomTLS | None = Field(default=None, description="set: the SCP speaks DICOM TLS only")

    @field_validator("extra_ae_titles")
    @classmethod
    def _strip_titles(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("AE title must not be blank")
        return [t.strip() for t in v]

    @property
    def called_ae_titles(self) -> frozenset[str]:
        """Every called AE title the SCP answers to (compared with surrounding spaces stripped)."""
        return frozenset({self.ae_title.strip(), *self.extra_ae_titles})


class WebSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    session_hours: float = Field(default=12.0, gt=0, le=168, description="a login lasts this long")
    secret_key_file: Path | None = Field(default=None, description="signs session cookies; default: "
                                         "<home>/web_secret.key, made on first start")
    secure_cookies: bool = Field(default=False, description="mark cookies Secure (set when served over HTTPS)")
    default_language: str = Field(default="en", pattern=r"^(en|vi)$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TAMSOAT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.tamsoat")))
    database_url: str | None = Field(default=None, description="default: sqlite file in home")
    spool_dir: Path | None = Field(default=None, description="default: <home>/spool")
    spool_page_cache: bool = Field(default=False, description="keep each received file in the page cache once "
                                   "it is durable (its first read by inference is faster; memory fills with "
                                   "files read once); default: drop it")
    reports_dir: Path | None = Field(default=None, description="default: <home>/reports")
    models_dir: Path = REPO_ROOT / "models"
    routing_file: Path = PACKAGE_DEFAULTS / "routing.yaml"
    quiet_period_s: float = Field(default=15.0, gt=0)
    workers: int = Field(default=1, ge=1, le=64)
    inference_threads: int = Field(default=2, ge=1, le=256)
    send_retry_base_s: float = Field(default=5.0, gt=0)
    send_retry_max_attempts: int = Field(default=8, ge=1)
    outbox_stuck_after_s: float = Field(default=3600.0, gt=0, description="health is degraded while a "
                                        "result has waited longer than this to be sent (or committed)")
    commitment_wait_s: float = Field(default=10.0, ge=0, description="how long to wait for the storage "
                                     "commitment report on the sending association")
    institution: str = "tamsoat"
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    destinations: list[Destination] = Field(default_factory=list)
    log_level: str = "INFO"
    preliminary_sr: bool = Field(default=False, description="send an UNVERIFIED SR as soon as a study is analysed")
    fhir_dir: Path | None = Field(default=None, description="FHIR DiagnosticReport bundles; default: <home>/fhir")
    datasets_dir: Path | None = Field(default=None, description="research snapshots exported through the API; "
                                      "default: <home>/datasets")

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, v: list[Destination]) -> list[Destination]:
        names = [d.name for d in v]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # model_config["yaml_file"] is set only on the subclass that load_settings makes for a file.
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    # Derived locations -------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'tamsoat.db'}"

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or self.home / "spool"

    @property
    def reports_path(self) -> Path:
        return self.reports_dir or self.home / "reports"

    @property
    def fhir_path(self) -> Path:
        return self.fhir_dir or self.home / "fhir"

    @property
    def datasets_path(self) -> Path:
        return self.datasets_dir or self.home / "datasets"

    @property
    def web_secret_path(self) -> Path:
        return self.web.secret_key_file or self.home / "web_secret.key"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says why in one sentence."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: defaults < YAML file < environment < ``overrides`` (flags)."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    cls: type[Settings] = Settings
    if config_file is not None:
        config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": config_file})
        cls = type("FileSettings", (Settings,), {"model_config": config})
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
