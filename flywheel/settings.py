"""Runtime settings, read once at start-up from FLYWHEEL_* variables and passed down."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel.domain.rounds.config import SEMANTIC_THRESHOLD
from flywheel.domain.rounds.promotion import PromotionConfig
from flywheel.domain.signals import SignalConfig

if TYPE_CHECKING:
    from flywheel.domain.rounds import RoundConfig

PREFIX = "FLYWHEEL_"

# The FLYWHEEL_* variables Flywheel reads outside Settings, with who reads them. Every other FLYWHEEL_* variable
# in the environment must be a setting: a typo is refused at start-up instead of passing silently.
READ_ELSEWHERE: dict[str, str] = {
    "FLYWHEEL_IMAGE": "Compose's interpolation variable for the image name (docker-compose.yml), not a process's",
}

# Names older Compose files used: the hint names the setting that replaced them.
RENAMED = {"FLYWHEEL_VLLM_URL": "FLYWHEEL_GENERATOR_URL", "FLYWHEEL_VLLM_MODEL": "FLYWHEEL_GENERATOR_MODEL"}


class UnknownSetting(ValueError):
    """A FLYWHEEL_* environment variable that is neither a setting nor read elsewhere (READ_ELSEWHERE)."""


def setting_names() -> set[str]:
    """Every FLYWHEEL_* variable a Settings field is read from."""
    return {PREFIX + name.upper() for name in Settings.model_fields}


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a FLYWHEEL_* variable that nothing reads, naming it and the nearest known name."""
    known = setting_names() | set(READ_ELSEWHERE)
    unknown = sorted(k for k in environ if k.upper().startswith(PREFIX) and k.upper() not in known)
    if not unknown:
        return
    lines = []
    for name in unknown:
        near = [RENAMED[name.upper()]] if name.upper() in RENAMED else difflib.get_close_matches(
            name.upper(), sorted(known), n=1, cutoff=0.6)
        lines.append(f"{name}" + (f" (did you mean {near[0]}?)" if near else ""))
    raise UnknownSetting(f"unknown environment variable{'s' if len(unknown) > 1 else ''}: {'; '.join(lines)}. "
                         "Every FLYWHEEL_* variable must be a setting (flywheel/settings.py)")


def default_home() -> Path:
    # Project-local like .venv: a home directory is often private (mode 700), and the embedded
    # PostgreSQL must run as an unprivileged user who can reach its data directory.
    return Path.cwd() / ".flywheel"


class Settings(BaseSettings):
    """Everything a process needs; empty URLs mean "use the embedded local stack"."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    # A libpq URL; its query passes on to the connection (`?sslmode=verify-full&sslrootcert=...`). Printed and
    # logged with its password masked (mask_url).
    database_url: str = ""
    kafka_bootstrap: str = ""
    # `flywheel setup` (the schema step, run as the database's owner) makes the least-privilege roles login roles
    # with these passwords (unset: a group role to grant to login users). See store/db.py.
    db_ingest_password: SecretStr = SecretStr("")
    db_report_password: SecretStr = SecretStr("")
    db_trainer_password: SecretStr = SecretStr("")
    # How every Kafka client Flywheel runs reaches the brokers (KafkaSecurity): TLS with a CA file (and a client
    # certificate and key for mutual TLS), SASL with a mechanism and credentials, or both (SASL_SSL).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_cafile: str = ""  # PEM; unset: the system's trusted CAs
    kafka_ssl_certfile: str = ""  # PEM client certificate, for brokers that authenticate clients by certificate
    kafka_ssl_keyfile: str = ""
    kafka_ssl_key_password: SecretStr = SecretStr("")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")

    feedback_topic: str = "flywheel.feedback"
    deadletter_topic: str = "flywheel.deadletter"
    rounds_topic: str = "flywheel.rounds"
    generation_topic: str = "flywheel.generation"  # requests for generation workers (flywheel generate --via-kafka)
    generation_group: str = "flywheel-generation"
    generation_batch: int = 32  # requests per engine call
    # An engine call that fails transiently (sampling.generation.TransientEngineError) is retried this many times,
    # waiting generation_retry_seconds, then twice as long each time (at most a minute), before its requests are
    # dead-lettered.
    generation_retries: int = Field(default=4, ge=0)
    generation_retry_seconds: float = Field(default=1.0, ge=0)
    partitions: int = 4  # of the feedback and generation topics
    deadletter_partitions: int = Field(default=1, gt=0)
    # Announcements carry no key: on more than one partition a reader may see them out of order.
    rounds_partitions: int = Field(default=1, gt=0)
    # Of every topic Flywheel creates: 1 fits a single broker (the local stack, the Compose file); 3 is usual on a
    # production cluster.
    replication_factor: int = Field(default=1, gt=0)
    consumer_group: str = "flywheel-ingest"

    batch_size: int = 2000
    batch_timeout: float = 0.25
    max_event_bytes: int = 256 * 1024
    # Feedback whose interaction has not arrived is parked this long (in event time) before it is dead-lettered.
    grace_seconds: float = 300.0
    # A worker with nothing to read for this long is caught up (see store.ingest.expire_parked).
    idle_seconds: float = 60.0
    sweep_interval: float = 5.0
    # Dead letters and parked messages keep their original bytes (encrypted under the user's key when the user can
    # be read) this long; then the bytes are nulled and the rows kept, so counts still reconcile.
    raw_retention_days: float = Field(default=14.0, ge=0)
    # On Ctrl-C, `flywheel up` lets its worker read what the broker still holds for at most this long (the local
    # broker keeps messages in memory only: what is left unread when it stops is gone).
    drain_seconds: float = Field(default=10.0, ge=0)
    # The signals projector runs this often and takes everything committed since its last run (at most
    # signals_max_events): a longer interval derives each hot prompt group less often, signals lag more.
    # The signal rules' thresholds, margins and confidences (FLYWHEEL_SIGNALS, JSON: {"edit_min_distance": 0.2}).
    # The signals read model is derived with them: after a change, `flywheel replay` derives it anew.
    signals: SignalConfig = Field(default_factory=SignalConfig)
    # Promotion gates' limits and which of them block (FLYWHEEL_PROMOTION, JSON: {"min_sft_rows": 500}; unset: the
    # defaults in flywheel/domain/rounds/promotion.py). Part of every round build's config and config_version.
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    # The semantic contamination check (paraphrases of quarantine items, by sentence embeddings; see README). Off by
    # default: its embedder needs torch, which only the generation virtualenv carries. The threshold's default is
    # the one bench/paraphrase.py chose (RoundConfig.semantic_threshold).
    semantic_check: bool = False
    semantic_threshold: float = Field(default=SEMANTIC_THRESHOLD, gt=0, le=1)
    # Who round events (build, promote, rollback, restore, consume, quarantine) say did it, when a command is not
    # given --by; unset: the OS user.
    operator: str = ""
    signals_interval: float = Field(default=1.0, gt=0)
    signals_max_events: int = Field(default=50_000, gt=0)
    # Of a core (the projector has a process of its own): a long run delays the next accordingly.
    signals_max_share: float = Field(default=0.25, gt=0, le=1)
    # Interactions and feedback the projector keeps in memory between runs, so a hot prompt group is not read
    # and rewritten whole on every run (roughly 1-2 KB each).
    signals_cache_records: int = Field(default=100_000, ge=0)
    # Nothing appended for this long: ingest has gone quiet, and what is left is derived without waiting.
    signals_quiet: float = Field(default=0.25, gt=0)
    # Short sessions make group joins fast on the local broker; production brokers can use more.
    kafka_session_timeout: float = 6.0
    # Prometheus metrics, one port per process kind so that they can share a host (0: none).
    metrics_port: int = 0  # the ingest worker
    generation_metrics_port: int = 0  # a generation worker
    scheduler_metrics_port: int = 0  # the scheduler
    # Generation: a local model directory for in-process vLLM, or the URL of an OpenAI-compatible vLLM server.
    generator_model: str = ""
    generator_url: str = ""
    generator_model_version: str = "local"
    reward_model: str = ""  # a sequence-classification model directory for the reward-model scorer
    # The LLM judge, a model of its own: a local model directory for in-process vLLM, or the name a vLLM
    # OpenAI-compatible server at judge_url serves it under. It grades under the rubric in the judge_rubric file.
    judge_model: str = ""
    judge_url: str = ""
    judge_model_version: str = ""  # default: a content hash of the local model directory, else the served name
    judge_rubric: str = ""  # a text file; with it and a judge model, `select` and the nightly run grade with the judge
    # A judge that is the policy grading its own candidates favours them: refused unless this is set.
    judge_may_be_policy: bool = False
    # The longest rationale a judge may give; its reply is held to a format whose length this bounds, so a
    # reply always fits in its token budget (rationale + 32 tokens).
    judge_rationale_chars: int = Field(default=300, ge=0)
    # Selection (`select` and the nightly run; select's options override): a checks file (sampling/adapters/checks.py),
    # the deciding scorer (needed when scorers on several scales judge a group), and the thresholds on its scale.
    select_checks: str = ""
    select_decide_by: str = ""
    select_sft_threshold: float = 0.8
    select_min_margin: float = Field(default=0.2, ge=0)
    # Each selection run has its judge and reward model score the users' pairs about its hard cases and the
    # bias-probe audit set (sampling/data/bias_probes.jsonl); a scorer below this accuracy on it is flagged.
    scorer_audit: bool = True
    probe_min_accuracy: float = Field(default=0.8, ge=0, le=1)
    audit_cron: str = "30 2 * * *"
    rounds_dir: str = ""
    nightly_cron: str = "0 3 * * *"
    nightly_steps: str = "sample,generate,select,build"  # drop a step to skip it
    nightly_budget: int = 200  # hard cases sampled per night

    @model_validator(mode="before")
    @classmethod
    def _known_environment(cls, values: Any) -> Any:
        check_environment(os.environ)
        return values

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        self.kafka_security()
        return self

    def kafka_security(self) -> KafkaSecurity:
        """How Flywheel's Kafka clients authenticate and encrypt (ValueError when the settings are incomplete)."""
        sasl = self.kafka_security_protocol.startswith("SASL_")
        return KafkaSecurity(
            protocol=self.kafka_security_protocol, cafile=self.kafka_ssl_cafile, certfile=self.kafka_ssl_certfile,
            keyfile=self.kafka_ssl_keyfile, key_password=self.kafka_ssl_key_password,
            sasl_mechanism=self.kafka_sasl_mechanism if sasl else "", username=self.kafka_sasl_username,
            password=self.kafka_sasl_password)

    def secrets(self) -> list[str]:
        """Every secret these settings hold (passwords, the database URL's password), to keep out of logs."""
        held = [getattr(self, name).get_secret_value() for name in secret_names()]
        with contextlib.suppress(ValueError):
            held.append(urlsplit(self.database_url).password or "")
        return [s for s in held if s]

    def round_config(self) -> RoundConfig:
        """The config a round build uses: the default one with the configured promotion gates."""
        from flywheel.domain.rounds import RoundConfig

        return RoundConfig(promotion=self.promotion, semantic=self.semantic_check,
                           semantic_threshold=self.semantic_threshold)

    def child_env(self) -> dict[str, str]:
        """This process's environment with the FLYWHEEL_* variables that reproduce these settings in a child."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
        env.update({f"FLYWHEEL_{name.upper()}": json.dumps(value) if isinstance(value, dict) else str(value)
                    for name, value in self.model_dump(mode="json").items()})
        env.update({f"FLYWHEEL_{name.upper()}": getattr(self, name).get_secret_value() for name in secret_names()})
        return env

    @property
    def stack_dir(self) -> Path:
        return self.home / "stack"

    @property
    def rounds_root(self) -> Path:
        """Where round directories and the `current` pointer live (FLYWHEEL_ROUNDS_DIR, default home/rounds)."""
        return Path(self.rounds_dir) if self.rounds_dir else self.home / "rounds"


def secret_names() -> list[str]:
    """The settings that hold a secret: never printed, logged or dumped as they are."""
    return [name for name, f in Settings.model_fields.items() if f.annotation is SecretStr]


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, to print or log (postgresql://flywheel:***@db:5432/flywheel)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL: nothing can be told about it safely
        return "<unprintable URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class KafkaSecurityError(ValueError):
    """Kafka security settings that cannot work together (named by their FLYWHEEL_* variables)."""


@dataclass(frozen=True, kw_only=True)
class KafkaSecurity:
    """How a Kafka client reaches the brokers: the one place each client library's configuration is built from
    the settings (kafka-python for the admin, probes, announcer and FeedbackClient; librdkafka for its sender;
    aiokafka through Faust for the workers)."""

    protocol: str = "PLAINTEXT"
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    key_password: SecretStr = field(default_factory=lambda: SecretStr(""))
    sasl_mechanism: str = ""  # set exactly when protocol is SASL_*
    username: str = ""
    password: SecretStr = field(default_factory=lambda: SecretStr(""))

    def __post_init__(self) -> None:
        problems = []
        if self.protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            problems.append(f"FLYWHEEL_KAFKA_SECURITY_PROTOCOL={self.protocol} is not PLAINTEXT, SSL, "
                            "SASL_PLAINTEXT or SASL_SSL")
        if self.sasl and not (self.username and self.password.get_secret_value()):
            problems.append(f"{self.protocol} needs FLYWHEEL_KAFKA_SASL_USERNAME and FLYWHEEL_KAFKA_SASL_PASSWORD")
        if self.sasl and self.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            problems.append(f"FLYWHEEL_KAFKA_SASL_MECHANISM={self.sasl_mechanism} is not PLAIN, SCRAM-SHA-256 or "
                            "SCRAM-SHA-512")
        if (self.cafile or self.certfile or self.keyfile) and not self.tls:
            problems.append(f"FLYWHEEL_KAFKA_SSL_* files are set but FLYWHEEL_KAFKA_SECURITY_PROTOCOL={self.protocol} "
                            "does not use TLS (SSL or SASL_SSL)")
        if bool(self.certfile) != bool(self.keyfile):
            problems.append("a client certificate needs both FLYWHEEL_KAFKA_SSL_CERTFILE and "
                            "FLYWHEEL_KAFKA_SSL_KEYFILE")
        for name, path in (("CAFILE", self.cafile), ("CERTFILE", self.certfile), ("KEYFILE", self.keyfile)):
            if path and not Path(path).is_file():
                problems.append(f"FLYWHEEL_KAFKA_SSL_{name}={path}: no such file")
        if problems:
            raise KafkaSecurityError("; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def describe(self) -> str:
        """For logs and `flywheel doctor`: the protocol, mechanism and user, never the password."""
        return self.protocol + (f" {self.sasl_mechanism} as {self.username}" if self.sasl else "")

    def kafka_python(self) -> dict[str, Any]:
        """kafka-python's KafkaProducer / KafkaConsumer / KafkaAdminClient arguments."""
        config: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            config.update(ssl_check_hostname=True, ssl_cafile=self.cafile or None,
                          ssl_certfile=self.certfile or None, ssl_keyfile=self.keyfile or None,
                          ssl_password=self.key_password.get_secret_value() or None)
        if self.sasl:
            config.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password.get_secret_value())
        return config

    def librdkafka(self) -> dict[str, str]:
        """librdkafka's (confluent-kafka's) configuration properties."""
        config = {"security.protocol": self.protocol.lower()}
        if self.tls:
            config.update({k: v for k, v in (
                ("ssl.ca.location", self.cafile), ("ssl.certificate.location", self.certfile),
                ("ssl.key.location", self.keyfile), ("ssl.key.password", self.key_password.get_secret_value()),
            ) if v})
        if self.sasl:
            config.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.username,
                           "sasl.password": self.password.get_secret_value()})
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the asyncio clients (aiokafka under Faust); None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.cafile or None)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile, self.key_password.get_secret_value() or None)
        return context

    def faust_credentials(self) -> Any:
        """Faust's `broker_credentials`: SASL credentials (over TLS for SASL_SSL), a TLS context, or None."""
        if self.sasl:
            import faust

            return faust.SASLCredentials(username=self.username, password=self.password.get_secret_value(),
                                         ssl_context=self.ssl_context(), mechanism=self.sasl_mechanism)
        return self.ssl_context()


PLAINTEXT = KafkaSecurity()


@dataclass(frozen=True)
class Endpoints:
    """Where Postgres and Kafka are (flywheel.bootstrap.resolve: the settings' URLs, else the local stack's)."""

    database_url: str
    kafka_bootstrap: str
    embedded: bool = False
