"""docker-compose.yml is a valid Compose file, checked without Docker.

The file is validated against the official Compose Specification JSON schema, shipped as
infra/compose-spec.json. That copy is `schema/compose-spec.json` of github.com/compose-spec/compose-spec
(Apache-2.0, licence text in infra/compose-spec.LICENSE), taken unmodified from the copy vendored in the
PyPI package check-jsonschema 0.39.0 (check_jsonschema/builtin_schemas/vendor/compose-spec.json,
sha256 d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64). To refresh it, copy that file
from a newer check-jsonschema release.

Like `docker compose config`, variables are interpolated before the checks; the environment is empty,
so every `${VAR}` in the file must carry a default.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "infra" / "compose-spec.json"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

CORE_SERVICES = {"kafka", "postgres", "setup", "worker", "scheduler"}
GPU_SERVICES = {"vllm", "generation-worker"}
FLYWHEEL_SERVICES = ("worker", "scheduler", "generation-worker")
# The command each Flywheel service runs, and the metrics-port setting that command serves on.
COMMANDS = {"worker": "worker", "scheduler": "scheduler", "generation-worker": "generation-worker"}
METRICS_PORTS = {"worker": "FLYWHEEL_METRICS_PORT", "scheduler": "FLYWHEEL_SCHEDULER_METRICS_PORT",
                 "generation-worker": "FLYWHEEL_GENERATION_METRICS_PORT"}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}; $$ escapes.
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})")
# Go durations, as Compose parses healthcheck intervals and grace periods (the schema only says "string").
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose variable interpolation over a loaded document (nested defaults are not used here)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-"):
            return arg if unset else str(current)
        if op in ("?", ":?"):
            if unset:
                raise KeyError(f"${{{name}}} is required: {arg}")
            return str(current)
        if op in ("+", ":+"):
            return "" if unset else arg
        if current is None:
            raise KeyError(f"${{{name}}} has no default: docker compose would warn and use ''")
        return current

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    with COMPOSE.open() as f:
        doc = yaml.safe_load(f)  # resolves the x-flywheel anchors and `<<:` merge keys
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw, env={})


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# ---- the schema itself ----


def test_schema_is_the_compose_specification(validator: Any) -> None:
    assert validator.schema["title"] == "Compose Specification"
    assert validator.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    licence = (ROOT / "infra" / "compose-spec.LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence


def test_schema_rejects_a_broken_file(validator: Any, compose: dict[str, Any]) -> None:
    """The check is not vacuous: typos and wrong types in a copy of our file are reported."""
    bad = copy.deepcopy(compose)
    bad["services"]["worker"]["restrat"] = "always"
    bad["services"]["postgres"]["healthcheck"]["intervall"] = "5s"
    bad["services"]["kafka"]["ports"] = "29092"
    bad["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")
    errors = _errors(validator, bad)
    joined = "\n".join(errors)
    for fragment in ("restrat", "intervall", "services/kafka/ports", "capabilities"):
        assert fragment in joined, joined


# ---- the compose file ----


def test_compose_file_is_valid_against_the_compose_spec(validator: Any, compose: dict[str, Any]) -> None:
    errors = _errors(validator, compose)
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(errors)


def test_uninterpolated_file_is_valid_too(validator: Any, raw: dict[str, Any]) -> None:
    errors = _errors(validator, raw)
    assert not errors, "\n".join(errors)


def test_services_exist(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == CORE_SERVICES | GPU_SERVICES


def test_vllm_and_the_generation_worker_are_only_in_the_gpu_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in GPU_SERVICES:
        assert services[name]["profiles"] == ["gpu"]
    for name in CORE_SERVICES:
        assert "profiles" not in services[name], f"{name} must start without --profile"
    # Nothing that starts by default may depend on the optional services.
    for name in CORE_SERVICES:
        assert GPU_SERVICES.isdisjoint(services[name].get("depends_on", {}))


def test_vllm_serves_the_configured_model_on_a_gpu(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert any(p.endswith(":8000") for p in vllm["ports"])
    command = raw["services"]["vllm"]["command"]
    model = command[command.index("--model") + 1]
    assert model.startswith("${VLLM_MODEL:-") and model.endswith("}"), "the model comes from VLLM_MODEL"
    assert interpolate(model, {"VLLM_MODEL": "org/other"}) == "org/other"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


@pytest.mark.parametrize("name", FLYWHEEL_SERVICES)
def test_flywheel_env(compose: dict[str, Any], name: str) -> None:
    env = _env(compose["services"][name])
    assert env["FLYWHEEL_DATABASE_URL"] == "postgresql://flywheel_ingest:ingest@postgres:5432/flywheel"
    assert env["FLYWHEEL_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["FLYWHEEL_METRICS_PORT"] == "9464"
    assert env["FLYWHEEL_REPLICATION_FACTOR"] == "1", "one broker: nothing can be replicated further"
    assert env["FLYWHEEL_CONSUMER_GROUP"] != env["FLYWHEEL_GENERATION_GROUP"]


def test_every_process_kind_serves_metrics_on_a_port_of_its_own(compose: dict[str, Any]) -> None:
    env = _env(compose["services"]["worker"])
    ports = {name: env[setting] for name, setting in METRICS_PORTS.items()}
    assert len(set(ports.values())) == len(ports) and all(int(p) > 0 for p in ports.values())
    for name, port in ports.items():
        service = compose["services"][name]
        assert _env(service)[METRICS_PORTS[name]] == port
        assert port in service["expose"]
        assert f"127.0.0.1:{port}/metrics" in " ".join(service["healthcheck"]["test"]), name


def test_generation_reaches_vllm_at_its_base_url(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    """The client adds /v1 itself; the generation worker defaults to the gpu profile's server and its model."""
    gen = _env(compose["services"]["generation-worker"])
    assert gen["FLYWHEEL_GENERATOR_URL"] == "http://vllm:8000"
    assert gen["FLYWHEEL_GENERATOR_MODEL"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert compose["services"]["generation-worker"]["command"] == ["flywheel", "generation-worker"]
    assert compose["services"]["generation-worker"]["depends_on"]["vllm"] == {"condition": "service_healthy"}
    # Without a server the nightly run skips generation, rather than loading an engine in the scheduler.
    sched = _env(compose["services"]["scheduler"])
    assert sched["FLYWHEEL_GENERATOR_URL"] == sched["FLYWHEEL_GENERATOR_MODEL"] == ""
    wired = _env(interpolate(raw, {"GENERATOR_URL": "http://vllm:8000", "GENERATOR_MODEL": "m"})["services"][
        "scheduler"])
    assert (wired["FLYWHEEL_GENERATOR_URL"], wired["FLYWHEEL_GENERATOR_MODEL"]) == ("http://vllm:8000", "m")
    for env in (gen, sched, wired):
        assert not any(v.rstrip("/").endswith("/v1") for k, v in env.items() if k.endswith("_URL"))


def test_the_scheduler_has_the_nightly_scorers(raw: dict[str, Any]) -> None:
    values = {"REWARD_MODEL": "/models/rm", "JUDGE_MODEL": "judge-7b", "JUDGE_URL": "http://judge:8000",
              "JUDGE_RUBRIC": "/models/rubric.txt", "SELECT_CHECKS": "/models/checks.jsonl"}
    env = _env(interpolate(raw, values)["services"]["scheduler"])
    for name, value in values.items():
        assert env[f"FLYWHEEL_{name}"] == value
    assert "${MODELS_DIR:-./models}:/models:ro" in raw["services"]["scheduler"]["volumes"]


def test_flywheel_services_share_one_image_and_the_common_env(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    assert "x-flywheel" in raw, "the shared definition lives under the x-flywheel extension key"
    worker, scheduler, gen = (compose["services"][n] for n in FLYWHEEL_SERVICES)
    common = compose["x-flywheel-env"]
    assert _env(worker) == common
    for service in (scheduler, gen):
        assert set(common) <= set(_env(service))
    assert {k: v for k, v in _env(scheduler).items() if k in common} == common
    assert worker["image"] == scheduler["image"] == gen["image"]
    assert worker["build"] == scheduler["build"] == gen["build"] == {"context": ".", "dockerfile": "infra/Dockerfile"}
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    for name in FLYWHEEL_SERVICES:
        assert compose["services"][name]["command"] == ["flywheel", COMMANDS[name]]
    assert worker["deploy"]["replicas"] >= 2


def _flywheel_keys(compose: dict[str, Any]) -> dict[str, set[str]]:
    """Every FLYWHEEL_* key a Flywheel process gets: from each service's environment and the Dockerfile's ENV."""
    where: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for key in _env(service):
            if key.startswith("FLYWHEEL_"):
                where.setdefault(key, set()).add(name)
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            for key in re.findall(r"(?:^|\s)(FLYWHEEL_[A-Z0-9_]+)[= ]", line.strip()[4:]):
                where.setdefault(key, set()).add("Dockerfile")
    return where


def test_every_flywheel_key_in_compose_and_the_dockerfile_is_a_setting(compose: dict[str, Any]) -> None:
    """A key that is not a setting would stop the process at start-up (flywheel.settings.check_environment)."""
    from flywheel.settings import setting_names

    where = _flywheel_keys(compose)
    assert "FLYWHEEL_HOME" in where and "Dockerfile" in where["FLYWHEEL_HOME"], "the Dockerfile's ENV is read"
    assert {"FLYWHEEL_JUDGE_MODEL", "FLYWHEEL_REWARD_MODEL", "FLYWHEEL_GENERATION_GROUP"} <= set(where)
    unknown = {key: sorted(services) for key, services in where.items() if key not in setting_names()}
    assert not unknown, f"not settings: {unknown}"


def test_the_key_check_is_not_vacuous(compose: dict[str, Any]) -> None:
    bad = copy.deepcopy(compose)
    bad["services"]["scheduler"]["environment"]["FLYWHEEL_VLLM_URL"] = "http://vllm:8000/v1"
    from flywheel.settings import setting_names

    assert "FLYWHEEL_VLLM_URL" in set(_flywheel_keys(bad)) - setting_names()


@pytest.mark.parametrize("name", FLYWHEEL_SERVICES)
def test_each_service_environment_builds_its_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    """Each service's environment, as a process would see it, is accepted by Settings and reaches its fields."""
    from flywheel.settings import Settings

    for key in [k for k in os.environ if k.upper().startswith("FLYWHEEL_")]:
        monkeypatch.delenv(key)
    env = _env(compose["services"][name])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.database_url == env["FLYWHEEL_DATABASE_URL"]
    assert settings.kafka_bootstrap == env["FLYWHEEL_KAFKA_BOOTSTRAP"]
    assert settings.metrics_port == 9464
    assert settings.scheduler_metrics_port == 9465 and settings.generation_metrics_port == 9466
    assert settings.replication_factor == 1 and settings.deadletter_partitions == settings.rounds_partitions == 1
    assert settings.generator_url == env["FLYWHEEL_GENERATOR_URL"]


@pytest.mark.parametrize("name", FLYWHEEL_SERVICES)
def test_flywheel_waits_for_healthy_infra(compose: dict[str, Any], name: str) -> None:
    depends = compose["services"][name]["depends_on"]
    assert depends == {
        "kafka": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "setup": {"condition": "service_completed_successfully"},
        **({"vllm": {"condition": "service_healthy"}} if name == "generation-worker" else {}),
    }
    for dep in set(depends) - {"setup"}:
        assert "test" in compose["services"][dep]["healthcheck"]


def test_setup_runs_once_as_the_owner_and_gives_the_ingest_role_its_password(compose: dict[str, Any]) -> None:
    setup = compose["services"]["setup"]
    assert setup["command"] == ["flywheel", "setup"] and setup["restart"] == "no"
    assert setup["image"] == compose["services"]["worker"]["image"]
    assert setup["depends_on"] == {"kafka": {"condition": "service_healthy"},
                                   "postgres": {"condition": "service_healthy"}}
    env = _env(setup)
    assert env["FLYWHEEL_DATABASE_URL"] == "postgresql://postgres:postgres@postgres:5432/flywheel"
    assert env["FLYWHEEL_DB_INGEST_PASSWORD"] == "ingest"
    assert env["FLYWHEEL_DB_REPORT_PASSWORD"] == env["FLYWHEEL_DB_TRAINER_PASSWORD"] == ""  # group roles
    common = {k: v for k, v in compose["x-flywheel-env"].items() if k != "FLYWHEEL_DATABASE_URL"}
    assert {k: env[k] for k in common} == common  # the same topics, partitions and groups as the others


def test_no_flywheel_process_but_setup_connects_as_the_superuser(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        url = _env(service).get("FLYWHEEL_DATABASE_URL", "")
        assert name == "setup" or not url.startswith("postgresql://postgres:"), name


def test_postgres(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"].split(":")[0] == "postgres" and pg["image"].split(":")[1].startswith("16")
    env = _env(pg)
    assert env["POSTGRES_DB"] == "flywheel"
    url = _env(compose["services"]["setup"])["FLYWHEEL_DATABASE_URL"]
    assert url == f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/flywheel"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_password_overrides_reach_both_sides(raw: dict[str, Any]) -> None:
    doc = interpolate(raw, {"POSTGRES_PASSWORD": "s3cret", "INGEST_DB_PASSWORD": "in-s3cret",
                            "TRAINER_DB_PASSWORD": "tr-s3cret"})
    assert _env(doc["services"]["postgres"])["POSTGRES_PASSWORD"] == "s3cret"
    setup = _env(doc["services"]["setup"])
    assert "postgres:s3cret@postgres" in setup["FLYWHEEL_DATABASE_URL"]
    assert (setup["FLYWHEEL_DB_INGEST_PASSWORD"], setup["FLYWHEEL_DB_TRAINER_PASSWORD"]) == ("in-s3cret", "tr-s3cret")
    for name in FLYWHEEL_SERVICES:
        assert "flywheel_ingest:in-s3cret@postgres" in _env(doc["services"][name])["FLYWHEEL_DATABASE_URL"]


def test_kafka_is_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert set(listeners) <= set(protocols)
    assert "CONTROLLER" not in advertised
    bootstrap = _env(compose["services"]["worker"])["FLYWHEEL_KAFKA_BOOTSTRAP"]
    assert bootstrap in advertised.values(), "workers must reach the broker at an advertised address"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "/var/lib/kafka/data" in env["KAFKA_LOG_DIRS"]
    assert any(v.endswith(":/var/lib/kafka/data") for v in kafka["volumes"])


def test_durations_parse_as_go_durations(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key in ("interval", "timeout", "start_period", "start_interval"):
            value = service.get("healthcheck", {}).get(key)
            if value is not None:
                assert _DURATION.match(value), f"{name}.healthcheck.{key}={value!r}"
        if "stop_grace_period" in service:
            assert _DURATION.match(service["stop_grace_period"]), name


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


# ---- the image ----


def test_dockerfile_builds_the_package_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(re.search(r"\bpip install \.(\s|$)", ln) for ln in lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    entries = {ln.strip().rstrip("/") for ln in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".git", ".flywheel"} <= entries
    assert {"pyproject.toml", "flywheel", "store", "streams", "infra"}.isdisjoint(entries)
