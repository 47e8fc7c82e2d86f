"""Gateway configuration from keyword arguments, a ``gateways.toml``, or the environment.

Each setting is taken from the first place that has it: keyword arguments, then the
file, then environment variables. A gateway is configured when its credentials are
found; a section with ``enabled = false`` turns it off. Secrets are kept as
:class:`~kmsg_analytics._gateways.Secret`, so printing a configuration shows ``***``.

``gateways.toml``::

    [polling]                       # PollingConfig settings (optional)
    concurrency = 32
    interval_ms = 5000

    [solapi]
    api_key = "NCS..."              # or api_key_env = "NAME OF AN ENVIRONMENT VARIABLE"
    api_secret_env = "SOLAPI_API_SECRET"
    rate_limit = 50                 # requests per second (0: no limit)
    timeout = 10
    batch_size = 100                # message ids per list request (1: one per request)

    [iwinv]
    api_key_env = "IWINV_API_KEY"   # AlimTalk
    sms_api_key_env = "IWINV_SMS_API_KEY"
    sms_auth_key_env = "IWINV_SMS_AUTH_KEY"
    sms_company_id = "mycompany"

Environment variables: ``SOLAPI_API_KEY``, ``SOLAPI_API_SECRET``, ``SOLAPI_BASE_URL``,
``IWINV_API_KEY``, ``IWINV_SMS_API_KEY``, ``IWINV_SMS_AUTH_KEY``,
``IWINV_SMS_COMPANY_ID``, ``IWINV_BASE_URL``, ``IWINV_SMS_BASE_URL``.

Secrets written into the file itself (not through ``*_env``) are accepted, but a
warning says so when the file can be read by other users.
"""

# ruff: noqa: EM101, EM102 - InvalidRecordError takes (field, value, expected)

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import InvalidRecordError, KmsgAnalyticsError
from .._providers import PollingConfig, coerce_polling
from ._http import HttpSettings, Secret
from .iwinv import DEFAULT_ALIMTALK_URL, DEFAULT_SMS_URL, IwinvProvider
from .solapi import DEFAULT_BASE_URL, SolapiProvider

__all__ = ["GatewaysConfig", "IwinvConfig", "SolapiConfig", "load_gateways_config"]

_HTTP_KEYS = (
    "timeout",
    "connect_timeout",
    "rate_limit",
    "burst",
    "max_connections",
    "max_retries",
    "max_retry_wait",
)
_SOLAPI_SECRETS = ("api_key", "api_secret")
_SOLAPI_PLAIN = ("base_url", "provider_id", "max_pages", "batch_size", "enabled")
_SOLAPI_ENV = {
    "api_key": "SOLAPI_API_KEY",
    "api_secret": "SOLAPI_API_SECRET",
    "base_url": "SOLAPI_BASE_URL",
}
_IWINV_SECRETS = ("api_key", "sms_api_key", "sms_auth_key")
_IWINV_PLAIN = (
    "sms_company_id",
    "base_url",
    "sms_base_url",
    "provider_id",
    "x_forwarded_for",
    "page_size",
    "max_pages",
    "enabled",
)
_IWINV_ENV = {
    "api_key": "IWINV_API_KEY",
    "sms_api_key": "IWINV_SMS_API_KEY",
    "sms_auth_key": "IWINV_SMS_AUTH_KEY",
    "sms_company_id": "IWINV_SMS_COMPANY_ID",
    "base_url": "IWINV_BASE_URL",
    "sms_base_url": "IWINV_SMS_BASE_URL",
}


@dataclass(frozen=True)
class SolapiConfig:
    """SOLAPI's settings (secrets hidden in ``repr``).

    Examples
    --------
    >>> SolapiConfig(Secret("key"), Secret("secret"))  # doctest: +NORMALIZE_WHITESPACE
    SolapiConfig(api_key=Secret('***'), api_secret=Secret('***'),
                 base_url='https://api.solapi.com', provider_id='solapi', max_pages=3,
                 batch_size=100,
                 http=HttpSettings(timeout=10.0, connect_timeout=5.0, rate_limit=50.0,
                 burst=None, max_connections=32, max_retries=2, max_retry_wait=2.0))
    """

    api_key: Secret
    api_secret: Secret
    base_url: str = DEFAULT_BASE_URL
    provider_id: str = "solapi"
    max_pages: int = 3
    batch_size: int = 100
    http: HttpSettings = field(default_factory=HttpSettings)

    def build(self) -> SolapiProvider:
        """The provider these settings describe."""
        return SolapiProvider(
            self.api_key,
            self.api_secret,
            base_url=self.base_url,
            provider_id=self.provider_id,
            http=self.http,
            max_pages=self.max_pages,
            batch_size=self.batch_size,
        )


@dataclass(frozen=True)
class IwinvConfig:
    """IWINV's settings (secrets hidden in ``repr``)."""

    api_key: Secret | None = None
    sms_api_key: Secret | None = None
    sms_auth_key: Secret | None = None
    sms_company_id: str | None = None
    base_url: str = DEFAULT_ALIMTALK_URL
    sms_base_url: str = DEFAULT_SMS_URL
    provider_id: str = "iwinv"
    x_forwarded_for: str | None = None
    page_size: int = 50
    max_pages: int = 10
    http: HttpSettings = field(default_factory=HttpSettings)

    def build(self) -> IwinvProvider:
        """The provider these settings describe."""
        return IwinvProvider(
            self.api_key,
            sms_api_key=self.sms_api_key,
            sms_auth_key=self.sms_auth_key,
            sms_company_id=self.sms_company_id,
            base_url=self.base_url,
            sms_base_url=self.sms_base_url,
            provider_id=self.provider_id,
            x_forwarded_for=self.x_forwarded_for,
            http=self.http,
            page_size=self.page_size,
            max_pages=self.max_pages,
        )


@dataclass(frozen=True)
class GatewaysConfig:
    """Which gateways to poll and how, plus the runner's polling settings.

    ``warnings`` are things a person should know (a readable secrets file, a section
    without credentials); ``source`` says where the settings came from.
    """

    solapi: SolapiConfig | None = None
    iwinv: IwinvConfig | None = None
    polling: PollingConfig = field(default_factory=PollingConfig)
    source: str = "environment"
    warnings: tuple[str, ...] = ()

    @property
    def configured(self) -> tuple[str, ...]:
        """The provider ids of the configured gateways."""
        return tuple(c.provider_id for c in (self.solapi, self.iwinv) if c is not None)

    def build_providers(self) -> list[SolapiProvider | IwinvProvider]:
        """One provider per configured gateway (close them when done)."""
        out: list[SolapiProvider | IwinvProvider] = []
        if self.solapi is not None:
            out.append(self.solapi.build())
        if self.iwinv is not None:
            out.append(self.iwinv.build())
        return out


def load_gateways_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    solapi: Mapping[str, Any] | None = None,
    iwinv: Mapping[str, Any] | None = None,
    polling: Mapping[str, Any] | PollingConfig | None = None,
) -> GatewaysConfig:
    """Read the gateways' settings: keyword arguments, then ``path``, then ``environ``.

    Parameters
    ----------
    path
        A ``gateways.toml`` (see the module docs); ``None`` for none.
    environ
        The environment variables (``os.environ`` by default).
    solapi, iwinv, polling
        Settings given directly; they win over the file and the environment.

    Examples
    --------
    >>> cfg = load_gateways_config(environ={"SOLAPI_API_KEY": "k", "SOLAPI_API_SECRET": "s"})
    >>> cfg.configured, cfg.solapi.api_secret
    (('solapi',), Secret('***'))
    >>> load_gateways_config(environ={}, solapi={"api_key": "k", "apikey": "s"})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kmsg_analytics._errors.InvalidRecordError: invalid solapi='apikey': expected settings among ...
    """
    env = os.environ if environ is None else environ
    file_data: dict[str, Any] = {}
    warnings: list[str] = []
    source = "environment"
    if path is not None:
        file_path = Path(path)
        file_data = _read_toml(file_path)
        source = str(file_path)
        unknown = set(file_data) - {"solapi", "iwinv", "polling"}
        if unknown:
            raise InvalidRecordError(
                f"{file_path.name} section",
                sorted(unknown)[0],
                "one of [solapi], [iwinv], [polling]",
            )
    solapi_cfg = _solapi(
        _section(file_data, "solapi"), dict(solapi or {}), env, warnings, _path_of(path)
    )
    iwinv_cfg = _iwinv(
        _section(file_data, "iwinv"), dict(iwinv or {}), env, warnings, _path_of(path)
    )
    poll_given: Any = polling if polling is not None else file_data.get("polling")
    polling_cfg = coerce_polling(poll_given)
    if (
        solapi_cfg is not None
        and iwinv_cfg is not None
        and solapi_cfg.provider_id == iwinv_cfg.provider_id
    ):
        raise InvalidRecordError(
            "provider_id", solapi_cfg.provider_id, "different ids for SOLAPI and IWINV"
        )
    return GatewaysConfig(solapi_cfg, iwinv_cfg, polling_cfg, source, tuple(warnings))


def _path_of(path: str | os.PathLike[str] | None) -> Path | None:
    return None if path is None else Path(path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        msg = f"no gateway configuration at {path}: create it (see `kmsg-analytics poll --help`)"
        raise KmsgAnalyticsError(msg) from None
    except tomllib.TOMLDecodeError as err:
        msg = f"{path} is not valid TOML: {err}"
        raise KmsgAnalyticsError(msg) from None
    except OSError as err:
        msg = f"cannot read {path}: {err.strerror or err}"
        raise KmsgAnalyticsError(msg) from None


def _section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, Mapping):
        raise InvalidRecordError(f"[{name}]", "<value>", "a table such as [solapi] with keys")
    return dict(section)


def _merge(
    name: str,
    given: dict[str, Any],
    from_file: dict[str, Any],
    env: Mapping[str, str],
    secrets: tuple[str, ...],
    plain: tuple[str, ...],
    env_names: Mapping[str, str],
    warnings: list[str],
    path: Path | None,
) -> dict[str, Any]:
    allowed = {*secrets, *plain, *_HTTP_KEYS, *(f"{s}_env" for s in secrets)}
    for where in (given, from_file):
        for key in where:
            if key not in allowed:
                raise InvalidRecordError(name, key, "settings among " + ", ".join(sorted(allowed)))
    out: dict[str, Any] = {}
    literal_secrets = []
    for key in (*secrets, *plain, *_HTTP_KEYS):
        if key in given:
            out[key] = given[key]
            continue
        if key in from_file:
            out[key] = from_file[key]
            if key in secrets:
                literal_secrets.append(key)
            continue
        env_key = from_file.get(f"{key}_env") or given.get(f"{key}_env")
        if env_key is not None:
            if not isinstance(env_key, str) or not env_key:
                raise InvalidRecordError(f"{name}.{key}_env", env_key, "a variable name")
            if env_key not in env:
                warnings.append(f"[{name}] {key}_env names {env_key}, which is not set")
            else:
                out[key] = env[env_key]
            continue
        if key in env_names and env_names[key] in env:
            out[key] = env[env_names[key]]
    if literal_secrets and path is not None and _readable_by_others(path):
        warnings.append(
            f"{path} holds [{name}] {', '.join(literal_secrets)} and other users can read it: "
            f"run `chmod 600 {path}` or use {literal_secrets[0]}_env"
        )
    for key in secrets:
        value = out.get(key)
        if value is not None and not isinstance(value, str | Secret):
            raise InvalidRecordError(f"{name}.{key}", "<not shown>", "a string")
        if value is not None:
            out[key] = Secret(value) if value else None
    return out


def _readable_by_others(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def _http(name: str, values: Mapping[str, Any]) -> HttpSettings:
    settings = {k: values[k] for k in _HTTP_KEYS if k in values}
    if "rate_limit" in settings and settings["rate_limit"] in (0, False):
        settings["rate_limit"] = None
    try:
        return HttpSettings(**settings)
    except InvalidRecordError as err:  # name the section's key, not HttpSettings' field
        expected = str(err).split(": expected ", 1)[-1]
        key = err.field.removeprefix("http.")
        raise InvalidRecordError(f"{name}.{key}", err.value, expected) from None


def _enabled(name: str, values: Mapping[str, Any]) -> bool:
    enabled = values.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRecordError(f"{name}.enabled", enabled, "true or false")
    return enabled


def _solapi(
    from_file: dict[str, Any],
    given: dict[str, Any],
    env: Mapping[str, str],
    warnings: list[str],
    path: Path | None,
) -> SolapiConfig | None:
    values = _merge(
        "solapi", given, from_file, env, _SOLAPI_SECRETS, _SOLAPI_PLAIN, _SOLAPI_ENV, warnings, path
    )
    if not _enabled("solapi", values):
        return None
    key, secret = values.get("api_key"), values.get("api_secret")
    if key is None or secret is None:
        if from_file or given:
            missing = " and ".join(n for n in ("api_key", "api_secret") if values.get(n) is None)
            warnings.append(f"[solapi] has no {missing}: SOLAPI is not configured")
        return None
    extra: dict[str, Any] = {
        k: values[k] for k in ("base_url", "provider_id", "max_pages", "batch_size") if k in values
    }
    return SolapiConfig(key, secret, http=_http("solapi", values), **extra)


def _iwinv(
    from_file: dict[str, Any],
    given: dict[str, Any],
    env: Mapping[str, str],
    warnings: list[str],
    path: Path | None,
) -> IwinvConfig | None:
    values = _merge(
        "iwinv", given, from_file, env, _IWINV_SECRETS, _IWINV_PLAIN, _IWINV_ENV, warnings, path
    )
    if not _enabled("iwinv", values):
        return None
    has_alimtalk = values.get("api_key") is not None
    has_sms = (
        values.get("sms_company_id")
        and (values.get("sms_api_key") or values.get("sms_auth_key"))
        and ((values.get("sms_api_key") and values.get("sms_auth_key")) or values.get("api_key"))
    )
    if not has_alimtalk and not has_sms:
        if from_file or given:
            warnings.append(
                "[iwinv] has neither api_key (AlimTalk) nor sms_api_key, sms_auth_key and "
                "sms_company_id (SMS): IWINV is not configured"
            )
        return None
    extra = {
        k: values[k]
        for k in (
            "api_key",
            "sms_api_key",
            "sms_auth_key",
            "sms_company_id",
            "base_url",
            "sms_base_url",
            "provider_id",
            "x_forwarded_for",
            "page_size",
            "max_pages",
        )
        if k in values
    }
    return IwinvConfig(http=_http("iwinv", values), **extra)
