"""docker-compose.yml and Dockerfile: every LAKE_* is a real setting, every needed service exists.

Docker is not available on the machines that run this suite, so the stack itself is not started;
these tests check the file's structure and that every `lake` command it runs exists.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings, setting_names

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_every_lake_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    known = set(setting_names())
    seen = set()
    for name, service in compose["services"].items():
        for key in _env(service):
            if key.startswith("LAKE_"):
                assert key in known, f"{name}: {key} is not a lake setting"
                seen.add(key)
    assert {"LAKE_CATALOG_URI", "LAKE_WAREHOUSE", "LAKE_NATS_URL", "LAKE_S3_ENDPOINT"} <= seen
    # nothing outside LAKE_* configures the lake services
    for name in ("lake", "maintenance", "lake-init"):
        extra = {k for k in _env(compose["services"][name]) if not k.startswith("LAKE_")}
        assert extra <= {"MAINTENANCE_INTERVAL_SECONDS"}, (name, extra)


def test_lake_environment_is_a_valid_production_configuration(compose: dict[str, Any]) -> None:
    env = {
        k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v)
        for k, v in _env(compose["services"]["lake"]).items()
    }
    settings = load_settings(env)
    assert settings.catalog_uri.startswith("postgresql")
    assert settings.is_s3 and settings.warehouse.startswith("s3://lake/")
    bucket_init = _command(compose["services"]["minio-init"]) + " ".join(
        compose["services"]["minio-init"].get("entrypoint") or []
    )
    assert "mc mb" in bucket_init and "lake/lake" in bucket_init, "the warehouse bucket is created"
    assert "@postgres:5432/" in settings.catalog_uri
    assert settings.nats_url == "nats://nats:4222"


def test_services_the_lake_needs_exist_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"nats", "minio", "minio-init", "postgres", "lake", "maintenance"} <= set(services)
    nats = services["nats"]
    assert "-js" in _command(nats) and "-sd" in _command(nats)
    assert any(v.startswith("nats-data:") for v in nats["volumes"]), "JetStream on a volume"
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])
    assert any(v.startswith("minio-data:") for v in services["minio"]["volumes"])
    for name in ("nats", "minio", "postgres", "lake", "maintenance"):
        assert "healthcheck" in services[name], name
    assert "lake serve --metrics-port 9100" in _command(services["lake"])
    assert services["lake"]["depends_on"]["nats"]["condition"] == "service_healthy"
    init_deps = services["lake-init"]["depends_on"]
    assert init_deps["postgres"]["condition"] == "service_healthy"
    assert init_deps["minio-init"]["condition"] == "service_completed_successfully"
    assert set(compose["volumes"]) >= {"nats-data", "minio-data", "postgres-data"}


def _lake_invocations(compose: dict[str, Any]) -> list[list[str]]:
    calls = []
    for service in compose["services"].values():
        text = _command(service)
        for part in re.split(r"[;&|]+|\bdo\b|\bdone\b", text):
            words = shlex.split(part.replace("sh -c", ""))
            if words and words[0] == "lake":
                calls.append(words[1:])
    return calls


def test_every_lake_command_in_compose_exists_with_its_options(compose: dict[str, Any]) -> None:
    calls = _lake_invocations(compose)
    names = {" ".join(w for w in c if not w.startswith("-"))[:40] for c in calls}
    assert any(c[:2] == ["compact", "--incremental"] for c in calls), names
    assert {("maintain", "compact-files"), ("maintain", "expire-snapshots")} <= {
        tuple(c[:2]) for c in calls
    }
    assert ["serve", "--metrics-port", "9100"] in calls
    for call in calls:
        # the command path ends at the first option (option values are not sub-commands)
        cmd = []
        for w in call:
            if w.startswith("-"):
                break
            cmd.append(w)
        result = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (call, result.output)
        for option in (w for w in call if w.startswith("--")):
            assert option in result.output, f"lake {' '.join(cmd)} has no {option}"


def test_dockerfile_runs_the_service_with_metrics() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert 'CMD ["lake", "serve", "--metrics-port", "9100"]' in text
    assert "EXPOSE 9100" in text and "HEALTHCHECK" in text
    for needed in ("catalog", "migrations", "pyproject.toml"):
        assert f"COPY {needed}" in text


def test_production_md_describes_the_maintenance_loop_as_compose_runs_it(
    compose: dict[str, Any],
) -> None:
    """The doc's `maintenance` row names every command of the loop with the same options (a
    retention the doc promises must be the one the job runs)."""
    doc = (ROOT / "docs" / "production.md").read_text()
    (row,) = [line for line in doc.splitlines() if line.startswith("| `maintenance` |")]
    loop = shlex.split(_command(compose["services"]["maintenance"]).replace(";", " ; "))
    calls = " ".join(loop).split(" ; ")
    lake_calls = [c.split() for c in calls if c.startswith("lake ")]
    assert len(lake_calls) >= 5, lake_calls
    for words in lake_calls:
        shown = " ".join(words[2:] if words[1] == "maintain" else words)
        assert f"`{shown}`" in row or f"`{' '.join(words)}`" in row, (shown, row)
    assert "--older-than 7d" not in row  # the job keeps each table's window (6 h), not 7 days


def _seconds(duration: str) -> float:
    """A compose duration (`30s`, `1m30s`, `1m`) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"unsupported duration {duration!r}"
    return int(parts.group(1) or 0) * 60 + float(parts.group(2) or 0)


def test_stop_grace_period_outlasts_the_writers_shutdown_grace(compose: dict[str, Any]) -> None:
    # Compose's default (10 s) equals the default LAKE_SHUTDOWN_GRACE_SECONDS: a stop while a
    # commit fails would end in SIGKILL before the writers give up cleanly.
    lake = compose["services"]["lake"]
    grace = load_settings(
        {k: v for k, v in _env(lake).items() if k == "LAKE_SHUTDOWN_GRACE_SECONDS"}
    ).shutdown_grace_seconds
    assert _seconds(str(lake.get("stop_grace_period", "10s"))) >= grace + 10


def test_production_md_sizes_the_catalog_connections_of_lake_serve() -> None:
    """ops19 #6: the PostgreSQL notes say how many catalog connections `lake serve` holds (one
    per writer, each writer opens its own catalog) and what the other commands need, so
    `max_connections` can be sized; the number follows the writers `lake serve` starts."""
    from iceberg_lake.ingest.service import resolve_targets

    doc = (ROOT / "docs" / "production.md").read_text()
    section = doc.split("## PostgreSQL catalog", 1)[1].split("\n## ", 1)[0]
    sizing = section.split("**Catalog connections", 1)[1].split("\n\n", 1)[0]
    writers = len(resolve_targets(None))
    assert f"**{writers}** for every table" in sizing, sizing
    assert "**one connection per writer**" in sizing and "max_connections" in sizing
    assert "--workers" in sizing and "lake status" in sizing
