"""Review server configuration: flags of `attrx review`, or environment variables ATTRX_REVIEW_<NAME>.
Its own prefix: the API server's ATTRX_HOST and ATTRX_PORT never move the review page."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ReviewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTRX_REVIEW_", extra="ignore")

    bundle: str = Field(description="the bundle that scored the queue (its classes and constraints)")
    db: str | None = Field(None, description="the decisions store, SQLite (default: QUEUE with .decisions.sqlite)")
    reviewers: str | None = Field(None, description="per-reviewer keys: a file of lines 'name:key'")
    api_key_file: str | None = Field(None, description="one key for everyone (each reviewer then gives a name); "
                                                       "default ATTRX_API_KEY, as attrx serve")
    lease_s: float = Field(300.0, gt=0, description="a product shown to a reviewer is theirs this long, then back "
                                                    "to the queue")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8100, ge=0, le=65535, description="port to listen on")
    log_level: str = Field("warning", pattern="^(critical|error|warning|info|debug)$", description="uvicorn's log level")
