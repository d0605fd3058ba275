"""The one settings object.

Precedence, highest first: explicit arguments, ``GATEWAY_*`` environment variables (``__``
nests: ``GATEWAY_SERVER__PORT=9443``), the YAML config file, then the embedded defaults. The
embedded defaults serve the local demo Triton (``backends.local``) over self-signed TLS, so a
fresh checkout runs with no file at all.

This is the only module that reads ``os.environ``, and only when ``load`` is called.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import ConfigError

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_file", default=None)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Frozen):
    host: str = "0.0.0.0"
    port: int = Field(8443, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    """Request bodies larger than this get 413."""
    access_log: bool = False


class TLSSettings(_Frozen):
    enabled: bool = True
    """Plain HTTP only when this is explicitly false (for example behind a mesh)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """Without cert_file and key_file, a local CA and server certificate are made under state_dir/tls."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_ca_file: Path | None = None
    client_auth: Literal["none", "optional", "required"] = "none"
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    """Subject alternative names of a generated server certificate."""

    @model_validator(mode="after")
    def _pairs(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_auth != "none" and self.client_ca_file is None:
            raise ValueError("client_auth needs client_ca_file")
        return self


class _BackendLimits(_Frozen):
    """Timeouts, retries and the bulkhead, the same for every kind of backend."""

    first_byte_timeout_s: float = Field(60.0, gt=0)
    """A generation that produces nothing within this fails (504) and may fall back."""
    retries: int = Field(1, ge=0, le=5)
    """Extra attempts when the backend is unavailable before the first byte (never after it)."""
    max_concurrency: int = Field(128, ge=1)
    """Generations and embedding calls in flight to this backend at once (the bulkhead)."""
    max_queue: int = Field(512, ge=0)
    """Requests that may wait for a slot; beyond this, 429 ``backend_busy`` at once."""
    queue_timeout_s: float = Field(30.0, gt=0)
    """The longest a request waits for a slot before 429 ``backend_busy``."""


class TritonBackendSettings(_BackendLimits):
    kind: Literal["triton"]
    url: str = "embedded"
    """host:port of Triton's gRPC endpoint, or ``embedded`` for the local Triton (local_triton)."""
    timeout_s: float = Field(120.0, gt=0)
    """Deadline for a whole generation (connect: connect_timeout_s; first byte: first_byte_timeout_s)."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Deadline for health and metadata calls."""
    repository_token: SecretStr | None = None
    """Token for Triton's model-repository API where the server restricts it (``--grpc-restricted-protocol``);
    used to load a pinned version (``gateway models pin``). The embedded Triton's own token is used for it."""
    repository_token_header: str = "triton-grpc-protocol-triton-access-token"
    """The header the token is sent in (the key of ``--grpc-restricted-protocol=model-repository:KEY=VALUE``)."""
    load_timeout_s: float = Field(300.0, gt=0)
    """Deadline for loading a model version (a large TensorRT-LLM engine takes minutes)."""
    metrics_url: str | None = "auto"
    """Triton's Prometheus endpoint, read for GPU and queue metrics (``/metrics``, alerts). ``auto``: the gRPC host
    on port 8002 (``embedded``: local_triton.metrics_port); null: not read."""


class OpenAIBackendSettings(_BackendLimits):
    kind: Literal["openai"]
    base_url: str
    """Base URL including /v1, e.g. http://vllm:8000/v1."""
    api_key: SecretStr | None = None
    timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(256, gt=0)


BackendSettings = Annotated[TritonBackendSettings | OpenAIBackendSettings, Field(discriminator="kind")]


class BreakerSettings(_Frozen):
    """The route's circuit breaker (gateway/breaker.py): degrade to the fallback while the model fails."""

    enabled: bool = True
    consecutive_failures: int = Field(5, ge=1)
    """This many failures in a row open the circuit."""
    error_rate: float = Field(0.5, gt=0, le=1)
    """So does this share of failures over ``window_s``, once ``min_requests`` were seen."""
    window_s: float = Field(60.0, gt=0)
    min_requests: int = Field(20, ge=1)
    cooldown_s: float = Field(30.0, gt=0)
    """How long an open circuit sends everything to the fallback before one request probes the model."""


class ModelRoute(_Frozen):
    """A public model name and where it is served."""

    name: str = Field(min_length=1)
    backend: str
    model: str = ""
    """The upstream model name; defaults to name."""
    version: str = ""
    """Pinned upstream model version (Triton). Changing the pin is how an operator rolls back."""
    kind: Literal["llm", "embedding"] = "llm"
    interface: Literal["ensemble", "vllm"] = "ensemble"
    chat_template: str | None = None
    chat_template_file: Path | None = None
    default_max_tokens: int = Field(256, ge=1)
    """max_tokens when a request sets none (TensorRT-LLM requires one)."""
    fallback: str | None = None
    """Public name of a route to use when this one fails before its first byte."""
    owned_by: str = "organization"
    embedding_input: str = "text_input"
    embedding_output: str = "embedding"
    breaker: BreakerSettings = BreakerSettings()

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    @model_validator(mode="after")
    def _template(self) -> ModelRoute:
        if self.chat_template is not None and self.chat_template_file is not None:
            raise ValueError("set chat_template or chat_template_file, not both")
        if self.fallback == self.name:
            raise ValueError("a model cannot be its own fallback")
        return self


class LocalTritonSettings(_Frozen):
    """The embedded demo Triton server (``backends.local``), run as a child process."""

    enabled: bool = True
    grpc_port: int = Field(8001, ge=0, le=65535)
    http_port: int = Field(8000, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    models: tuple[Literal["demo", "test"], ...] = ("demo",)
    """Model sets to serve: ``demo`` (SmolLM2 and e5) and ``test`` (tiny deterministic models)."""
    startup_timeout_s: float = Field(180.0, gt=0)


class JWTSettings(_Frozen):
    """OIDC / JWT bearer tokens from an identity provider."""

    issuer: str
    audience: str
    jwks_url: str | None = None
    """The provider's JWKS endpoint; fetched and cached, refetched on an unknown key id."""
    jwks_file: Path | None = None
    """A local JWKS file instead of a URL."""
    jwks_cache_s: float = Field(300.0, gt=0)
    jwks_min_refetch_s: float = Field(30.0, ge=0)
    """Least time between fetches forced by an unknown key id (rotation), so bad tokens cannot flood the IdP."""
    algorithms: tuple[Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "Ed25519"], ...] = (
        "RS256",
        "ES256",
        "EdDSA",
        "Ed25519",
    )
    """Allowed signature algorithms; never none or HS* (a JWKS holds public keys)."""
    leeway_s: float = Field(30.0, ge=0, le=300)
    """Clock skew allowed on exp and nbf."""
    require_nbf: bool = False
    roles_claim: str = "roles"
    """Where the roles are: a claim name, or a dotted path such as ``realm_access.roles``."""

    @model_validator(mode="after")
    def _one_source(self) -> JWTSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("set exactly one of jwks_url and jwks_file")
        return self


class AuthSettings(_Frozen):
    """Who may call. Every route but /healthz and /readyz needs a credential."""

    jwt: JWTSettings | None = None
    api_keys_db: Path | None = None
    """SQLite file of API keys (salted scrypt hashes); default state_dir/apikeys.sqlite3."""


class PolicySettings(_Frozen):
    """Casbin policy files that security teams own."""

    dir: Path = Path("policies")
    """Holds model.conf, policy.csv (or policy.d/*.csv), limits.yaml and tests.yaml."""
    watch: bool = True
    """Reload on change (validated and tested first; a bad edit keeps the old policy)."""


class RedisSettings(_Frozen):
    """Redis shared by the replicas: rate-limit windows, and policy change messages."""

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[:password@]host:port/db``, or ``rediss://`` for TLS."""
    prefix: str = Field("llm-gateway:", min_length=1)
    """Starts every key and the policy channel (``<prefix>policy``); one per gateway deployment."""
    timeout_s: float = Field(1.0, gt=0)
    """Deadline for connecting and for one call; past it a request is refused with 503 (fail closed)."""


class ChainSettings(_Frozen):
    """Where checkpoints are anchored: an EVM chain reached over JSON-RPC (web3)."""

    enabled: bool = True
    rpc_url: str = "embedded"
    """``embedded`` runs a local anvil node (``--state`` persisted in state_dir/ledger); or a node's URL."""
    chain_id: int = Field(31337, gt=0)
    """Checked against the node at start, so a wrong network is refused."""
    contract: str | None = None
    """The AuditAnchor address. Embedded: deployed on first start and remembered in state_dir/ledger/chain.json."""
    keystore: Path | None = None
    """Encrypted keystore (v3) of the account that pays for anchors; default state_dir/ledger/anchor-key.json."""
    password_file: Path | None = None
    """The keystore's password (mode 0600); default next to the keystore, with ``.password`` appended."""
    confirmations: int = Field(1, ge=1)
    gas_limit: int = Field(200_000, gt=0)
    max_fee_per_gas_gwei: float = Field(100.0, gt=0)
    """Most one anchor may pay per gas (EIP-1559 fee cap); set it for the chain in use."""
    max_priority_fee_per_gas_gwei: float = Field(1.0, ge=0)
    interval_s: float = Field(5.0, gt=0)
    """How often the newest checkpoint is anchored (if it is not yet)."""
    embedded_port: int = Field(8545, ge=0, le=65535)
    anvil_path: Path | None = None
    """The anvil binary; default the one installed by ``npm ci --prefix ledger/anchor/js``."""

    def url(self) -> str:
        return f"http://127.0.0.1:{self.embedded_port}" if self.rpc_url == "embedded" else self.rpc_url


class LedgerSettings(_Frozen):
    """The tamper-evident audit ledger (``ledger/``): every decision is an entry."""

    store: str | None = None
    """``postgresql://...`` for several replicas, or an SQLite path; default state_dir/ledger/ledger.sqlite3."""
    origin: str = Field("llm-gateway.local/default", min_length=1, pattern=r"^[^\s+]+$")
    """The log's name in checkpoints and on the chain; each replica needs its own."""
    signing_key: Path | None = None
    """Ed25519 key (PKCS#8 PEM, mode 0600) that signs checkpoints; default state_dir/ledger/checkpoint.key."""
    body_key: Path | None = None
    """HMAC key for the digests of bodies (which are never stored); default state_dir/ledger/body-hmac.key."""
    checkpoint_every: int = Field(1000, ge=1)
    checkpoint_interval_s: float = Field(10.0, gt=0)
    chain: ChainSettings = ChainSettings()


class PIISettings(_Frozen):
    """The personal-data analyzer (Presidio); what it does with findings is policy (policies/pii.yaml)."""

    profile: Literal["full", "patterns"] = "full"
    """``full``: spaCy NER and patterns (names, places; ~10 ms CPU per 200 bytes). ``patterns``: pattern and
    checksum recognizers only (no names; ~1.5 ms per 200 bytes)."""
    workers: int | None = Field(None, ge=1, le=64)
    """Analyzer processes (default: one per core but one, which is left to the event loop); each holds its own
    model (~180 MB for full)."""
    cache_size: int = Field(10_000, ge=0)
    """Findings of recently seen texts, keyed by an HMAC of the text (chat turns resend earlier messages)."""


class PinSettings(_Frozen):
    """Model version pins set at run time (``gateway models pin``), shared by the replicas."""

    refresh_s: float = Field(5.0, gt=0)
    """How often a replica reads the pins the others may have changed."""


class StatsSettings(_Frozen):
    """Differentially private statistics (budgets and bounds are policy: policies/privacy.yaml)."""

    index_interval_s: float = Field(60.0, ge=0)
    """How often the fact index catches up with the ledger in the background, so that a release only reads
    what is new (0: only when a release asks). Indexing costs about 20 µs of CPU per ledger entry."""


class MetricsSettings(_Frozen):
    """``GET /metrics`` (Prometheus text format; Casbin action ``read`` on ``route:/metrics``)."""

    triton_timeout_s: float = Field(2.0, gt=0)
    """Deadline for reading a Triton server's own metrics endpoint."""
    triton_max_age_s: float = Field(5.0, ge=0)
    """A reading of Triton's metrics this recent is reused (scrapes from several Prometheus servers)."""


class AlertSettings(_Frozen):
    """The gateway's own evaluation of ``policies/alerts.yaml`` (docs/operations.md)."""

    enabled: bool = True
    interval_s: float = Field(15.0, gt=0)
    """How often the rules are evaluated."""
    webhook_url: str | None = None
    """POSTed an Alertmanager-style JSON message on every firing and resolved alert."""
    webhook_token: SecretStr | None = None
    """Sent as ``Authorization: Bearer`` to the webhook."""
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_retries: int = Field(3, ge=0, le=10)
    """Retries after a failed delivery (connection error, 408, 429 or 5xx), with doubling backoff."""
    webhook_backoff_s: float = Field(1.0, ge=0)


class FairnessSettings(_Frozen):
    """Fairness audits (docs/fairness.md): decision records, outcome uploads and the scheduler; what is audited
    and how is policy (``policies/fairness/``)."""

    scheduler: bool = True
    """Run the audits that have a ``schedule``, each slot on exactly one replica."""
    scheduler_interval_s: float = Field(60.0, gt=0)
    """How often the scheduler looks for due audits (and, hourly, deletes expired decision records)."""
    probe_concurrency: int = Field(4, ge=1, le=64)
    """Probe requests in flight at once in a scheduled probe audit."""
    record_timeout_s: float = Field(5.0, gt=0)
    """The longest a request to a decision model waits for its decision record (``on_record_error:
    fail_closed``) before it fails with 503."""
    record_queue: int = Field(10_000, ge=1)
    """Decision records waiting to be written; beyond this a record fails (as its audit's on_record_error says)."""
    max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Largest outcomes CSV ``POST /admin/fairness/outcomes`` accepts (413 above)."""


class ReportSettings(_Frozen):
    """Compliance reports (docs/reports.md): what they cost in privacy budget and where they are kept."""

    epsilon_per_statistic: float = Field(0.1, gt=0, le=1.0)
    """Epsilon each differentially private number set of a report spends from the requester's budget (a full
    report releases five: requests, errors and fallbacks by model, denials by reason, PII by kind)."""
    signing_key: Path | None = None
    """Ed25519 key (PKCS#8 PEM, mode 0600) that signs reports; default state_dir/reports/report.key."""
    max_days: int = Field(92, ge=1, le=366)
    """Longest period one report covers (no longer than the privacy policy's query.max_days)."""
    max_queued: int = Field(3, ge=1, le=100)
    """Reports one caller may have pending or running at once; beyond it, 429 ``too_many_reports``."""


class OIDCLoginSettings(_Frozen):
    """Browser sign-in to ``/admin/ui`` with an OpenID Connect provider (authorization code flow with PKCE).

    The provider's access token is what the page then presents, so it must be a JWT that ``auth.jwt`` accepts
    (its issuer, audience and roles claim): the page and the API see the same identity and the same roles."""

    issuer: str = Field(min_length=1)
    """The provider's issuer; its ``/.well-known/openid-configuration`` is read on first use."""
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    """None: a public client (PKCE only). Otherwise sent with HTTP Basic to the token endpoint."""
    scopes: tuple[str, ...] = ("openid", "profile")
    redirect_uri: str | None = None
    """Registered at the provider; default ``https://<the host the browser used>/admin/ui/callback``."""
    audience: str | None = None
    """Sent as ``audience`` (Auth0) and ``resource`` (RFC 8707) when the provider needs to be told which API the
    access token is for; default not sent."""
    timeout_s: float = Field(10.0, gt=0)
    """Deadline for each call to the provider (discovery, token, keys)."""
    ca_file: Path | None = None
    """CA certificates that verify an ``https`` provider; default the system's."""

    @model_validator(mode="after")
    def _openid(self) -> OIDCLoginSettings:
        if "openid" not in self.scopes:
            raise ValueError("scopes must include openid")
        if not self.issuer.startswith(("https://", "http://")):
            raise ValueError("issuer must be an https:// (or, for a local provider, http://) URL")
        return self


class UISettings(_Frozen):
    """The compliance officers' page ``/admin/ui`` (docs/reports.md)."""

    enabled: bool = True
    oidc: OIDCLoginSettings | None = None
    """None: the page signs in with an API key only."""
    session_max_age_s: int = Field(8 * 3600, ge=60, le=7 * 86400)
    """How long a browser stays signed in (a token's own expiry ends its session sooner; closing the browser too)."""
    public_url: str | None = None
    """The page's address as browsers see it (``https://gateway.example.com``), when a TLS-terminating proxy sits in
    front of the gateway; default the address each request arrives at. Forms must come from its origin, cookies are
    ``Secure`` when it is ``https``, and the OIDC redirect URI defaults to it plus ``/admin/ui/callback``."""

    @model_validator(mode="after")
    def _public_url(self) -> UISettings:
        if self.public_url is not None and not self.public_url.startswith(("https://", "http://")):
            raise ValueError("public_url must be an https:// (or http://) URL")
        return self


class LoggingSettings(_Frozen):
    """Logs of ``gateway serve`` on stderr."""

    format: Literal["json", "text"] = "json"
    """``json``: one object per line (ts, level, logger, message, request_id). ``text``: for a terminal."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TracingSettings(_Frozen):
    """OpenTelemetry spans of the request path, exported over OTLP (docs/operations.md). Off by default; every
    request has a trace id either way (the ``x-trace-id`` header, the ledger, the logs)."""

    enabled: bool = False
    protocol: Literal["http", "grpc"] = "http"
    """``http``: OTLP/HTTP with protobuf bodies; ``grpc``: OTLP/gRPC."""
    endpoint: str | None = None
    """The collector. http: the traces URL (default ``http://127.0.0.1:4318/v1/traces``); grpc: ``scheme://host:port``
    (default ``http://127.0.0.1:4317``). ``https`` is TLS, ``http`` plaintext."""
    ca_file: Path | None = None
    """CA certificates that verify an ``https`` endpoint; default the system's."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    """Sent with every export (a hosted collector's API key)."""
    timeout_s: float = Field(10.0, gt=0)
    """Deadline for one export (it runs on the exporter's thread, never on a request)."""
    service_name: str = Field("llm-gateway", min_length=1)
    resource: dict[str, str] = Field(default_factory=dict)
    """More resource attributes of every span (``deployment.environment.name: prod``)."""
    sample_ratio: float = Field(1.0, ge=0, le=1)
    """Share of new traces recorded. A caller's ``traceparent`` decides for its own trace (parent-based)."""
    max_queue_size: int = Field(2048, ge=1)
    """Ended spans waiting for export; when full, new ones are dropped (a slow collector never blocks a request)."""

    @model_validator(mode="after")
    def _scheme(self) -> TracingSettings:
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError("endpoint must start with http:// or https://")
        return self


def _default_backends() -> dict[str, TritonBackendSettings | OpenAIBackendSettings]:
    return {"local": TritonBackendSettings(kind="triton", url="embedded")}


def _default_models() -> tuple[ModelRoute, ...]:
    return (
        ModelRoute(name="smollm2-135m-instruct", backend="local", owned_by="HuggingFaceTB"),
        ModelRoute(name="e5-small", backend="local", kind="embedding", owned_by="intfloat"),
    )


class Settings(BaseSettings):
    """Everything the gateway is configured with, validated once at start."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", frozen=True, extra="forbid")

    state_dir: Path = Path("var")
    """Where generated certificates and other local state live."""
    server: ServerSettings = ServerSettings()
    tls: TLSSettings = TLSSettings()
    backends: dict[str, BackendSettings] = Field(default_factory=_default_backends)
    models: tuple[ModelRoute, ...] = Field(default_factory=_default_models)
    local_triton: LocalTritonSettings = LocalTritonSettings()
    auth: AuthSettings = AuthSettings()
    policy: PolicySettings = PolicySettings()
    redis: RedisSettings | None = None
    """None: each replica limits rates on its own (in process)."""
    ledger: LedgerSettings = LedgerSettings()
    pii: PIISettings = PIISettings()
    stats: StatsSettings = StatsSettings()
    pins: PinSettings = PinSettings()
    metrics: MetricsSettings = MetricsSettings()
    alerts: AlertSettings = AlertSettings()
    fairness: FairnessSettings = FairnessSettings()
    reports: ReportSettings = ReportSettings()
    ui: UISettings = UISettings()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()

    @model_validator(mode="after")
    def _references(self) -> Settings:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        for name, b in self.backends.items():
            if isinstance(b, TritonBackendSettings) and b.url == "embedded" and not self.local_triton.enabled:
                raise ValueError(f"backends.{name}.url: 'embedded' needs local_triton.enabled")
        if self.ui.oidc is not None and self.auth.jwt is None:
            raise ValueError("ui.oidc: browser sign-in needs auth.jwt, which verifies the provider's access tokens")
        by_name = {m.name: m for m in self.models}
        for i, m in enumerate(self.models):
            if m.backend not in self.backends:
                raise ValueError(f"models.{i}.backend: unknown backend {m.backend!r}")
            if m.fallback is not None:
                fb = by_name.get(m.fallback)
                if fb is None:
                    raise ValueError(f"models.{i}.fallback: unknown model {m.fallback!r}")
                if fb.kind != m.kind:
                    raise ValueError(f"models.{i}.fallback: {m.fallback!r} is an {fb.kind} model")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, _CONFIG_FILE.get()))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings from arguments, environment, ``config_file`` and defaults.

        Raises ConfigError naming the file, line and key on any invalid value.
        """
        token = _CONFIG_FILE.set(config_file)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, config_file)) from None
        finally:
            _CONFIG_FILE.reset(token)

    @property
    def api_keys_db(self) -> Path:
        return self.auth.api_keys_db or self.state_dir / "apikeys.sqlite3"

    def ledger_dir(self) -> Path:
        return self.state_dir / "ledger"

    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    def ledger_store(self) -> str:
        return self.ledger.store or str(self.ledger_dir() / "ledger.sqlite3")

    def local_triton_url(self) -> str:
        return f"127.0.0.1:{self.local_triton.grpc_port}"


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = _read_yaml(path) if path is not None else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def _describe(exc: ValidationError, path: Path | None) -> str:
    root = _compose(path)
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in {"triton", "openai"})]
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f"{path}:{line}" if path is not None and line else (str(path) if path else "settings")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _compose(path: Path | None) -> yaml.Node | None:
    if path is None:
        return None
    try:
        return yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """Line (1-based) of the deepest YAML node on the path ``loc`` that exists in the file."""
    found = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        found = node.start_mark.line + 1
    return found
