"""Review server configuration: flags of `attrx review`, or environment variables ATTRX_REVIEW_<NAME>.
Its own prefix: the API server's ATTRX_HOST and ATTRX_PORT never move the review page."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from attrx.service.settings import LOOPBACK, check_key, read_key_file


class ReviewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTRX_REVIEW_", extra="ignore", hide_input_in_errors=True)

    bundle: str = Field(description="the bundle that scored the queue (its classes and constraints)")
    db: str | None = Field(None, description="the decisions store, SQLite (default: QUEUE with .decisions.sqlite)")
    reviewers: str | None = Field(None, description="the reviewers file: each reviewer's own key, as a salted hash "
                                  "(attrx review-keys add NAME --reviewers FILE); the way to know who decided")
    api_key: SecretStr | None = Field(None, description="one shared key for everyone instead, each reviewer then "
                                      "giving a name that nobody checks: their decisions are stored as unverified")
    api_key_file: str | None = Field(None, description="read the shared key from this file (first line)")
    no_auth: bool = Field(False, description="no key at all (loopback only): names asserted, stored as unverified")
    image_root: str | None = Field(None, description="product images are served only from under this folder "
                                   "(default: the queue file's folder)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="larger request bodies -> 413")
    lease_s: float = Field(300.0, gt=0, description="a product shown to a reviewer is theirs this long, then back "
                                                    "to the queue")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8100, ge=0, le=65535, description="port to listen on")
    log_level: str = Field("warning", pattern="^(critical|error|warning|info|debug)$", description="uvicorn's log level")

    @model_validator(mode="after")
    def _check(self):
        if self.api_key_file and self.api_key is None:
            self.api_key = read_key_file(self.api_key_file, "api_key_file")
        check_key(self.api_key, "ATTRX_REVIEW_API_KEY (api_key)")
        ways = [x for x, on in (("--reviewers", self.reviewers), ("a shared key", self.api_key),
                                ("--no-auth", self.no_auth)) if on]
        if len(ways) > 1:
            raise ValueError(f"choose one way to know reviewers, not {' and '.join(ways)}")
        if not ways:
            raise ValueError("attrx review needs to know its reviewers: --reviewers FILE (add each with `attrx "
                             "review-keys add NAME --reviewers FILE`), or one shared key (ATTRX_REVIEW_API_KEY; "
                             "names then unverified), or --no-auth on loopback")
        if self.no_auth and self.host not in LOOPBACK:
            raise ValueError(f"--no-auth listens on loopback only, not {self.host}: use --reviewers FILE")
        return self

    def shared_key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None
