"""`lake engines spark|trino`: print the settings that make Spark or Trino open the lake's tables.

Presentation only: the settings are built by `iceberg_lake.engine.spark` from the current lake
settings (`LAKE_*`, `lake.toml`). Secrets (catalog password, S3 secret key) print as `***`
unless `--show-secrets` is given.

`--jars maven` (the default) names Iceberg's runtime and the JDBC driver by Maven coordinates
(`spark.jars.packages`); `--jars local` names the jar files on this machine instead (`spark.jars`,
plus the driver's `java.library.path` for SQLite's JNI library): the files the test suite's Spark
and `lake compact --engine spark` run with, for machines that cannot reach Maven.

They follow the one output layer: `table` (the default) prints the files people paste
(`spark-defaults.conf` lines, Trino's `.properties`), `json` an object, `csv` `key,value` rows.
"""

from __future__ import annotations

import json
from enum import StrEnum

import typer

from iceberg_lake.cli.common import OUTPUT_OPTION, OutputFormat, emit, settings
from iceberg_lake.engine.spark import (
    local_spark_jars,
    spark_catalog_conf,
    spark_defaults,
    spark_jars_conf,
    spark_packages,
    spark_sql_command,
    trino_catalog_properties,
    trino_properties,
)

engines_app = typer.Typer(
    name="engines",
    help="Settings for other engines (Spark, Trino) to read and write the lake's tables by name.",
    no_args_is_help=True,
)

SHOW_SECRETS_OPTION = typer.Option(
    False, "--show-secrets", help="Print passwords and secret keys instead of ***."
)


class SparkFormat(StrEnum):
    """How `lake engines spark` prints the settings."""

    defaults = "defaults"
    spark_sql = "spark-sql"
    json = "json"


class JarSource(StrEnum):
    """Where `lake engines spark` says Spark gets Iceberg's runtime and the JDBC drivers."""

    maven = "maven"
    local = "local"


JARS_OPTION = typer.Option(
    JarSource.maven,
    "--jars",
    help="maven: Maven coordinates (spark.jars.packages); local: the jar files on this machine "
    "that the tests and `lake compact --engine spark` run with (spark.jars, java.library.path).",
)

FORMAT_OPTION = typer.Option(
    None,
    "--format",
    "-f",
    show_default=False,
    help="defaults: spark-defaults.conf lines; spark-sql: a command line; json: the settings "
    "(default: json for --output json, else defaults).",
)


def _key_value_rows(conf: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in conf.items()]


@engines_app.command("spark")
def spark(
    fmt: SparkFormat | None = FORMAT_OPTION,
    jars: JarSource = JARS_OPTION,
    show_secrets: bool = SHOW_SECRETS_OPTION,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Spark 3.5 settings: Iceberg's runtime, the JDBC catalog named like the lake's, warehouse.

    Queries then name tables as `<catalog>.bronze.stocks_trades` (catalog = LAKE_CATALOG_NAME).
    """
    s = settings()
    # --jars local: the Jackson patch jar is built into the user cache if missing.
    local = local_spark_jars(s) if jars == JarSource.local else None
    if fmt is None and output == OutputFormat.csv:
        conf = spark_jars_conf(s, local)
        conf.update(spark_catalog_conf(s, show_secrets=show_secrets))
        emit(_key_value_rows(conf), output, columns=["key", "value"])
        return
    if fmt is None:
        fmt = SparkFormat.json if output == OutputFormat.json else SparkFormat.defaults
    if fmt == SparkFormat.json:
        body: dict[str, object]
        if local is None:
            body = {"packages": spark_packages(s)}
        else:
            jar_conf = spark_jars_conf(s, local)
            body = {
                "jars": [str(p) for p in local.classpath],
                "driver_java_options": jar_conf["spark.driver.extraJavaOptions"],
            }
        body["conf"] = spark_catalog_conf(s, show_secrets=show_secrets)
        typer.echo(json.dumps(body, indent=2))
    elif fmt == SparkFormat.spark_sql:
        typer.echo(spark_sql_command(s, show_secrets=show_secrets, jars=local), nl=False)
    else:
        typer.echo(spark_defaults(s, show_secrets=show_secrets, jars=local), nl=False)


@engines_app.command("trino")
def trino(show_secrets: bool = SHOW_SECRETS_OPTION, output: OutputFormat = OUTPUT_OPTION) -> None:
    """Trino's `etc/catalog/<LAKE_CATALOG_NAME>.properties` (Iceberg connector, JDBC catalog)."""
    if output == OutputFormat.table:
        typer.echo(trino_properties(settings(), show_secrets=show_secrets), nl=False)
        return
    props = trino_catalog_properties(settings(), show_secrets=show_secrets)
    if output == OutputFormat.json:
        typer.echo(json.dumps(props, indent=2))
    else:
        emit(_key_value_rows(props), output, columns=["key", "value"])


def register(app: typer.Typer) -> None:
    """Add `lake engines ...` to the `lake` app."""
    app.add_typer(engines_app, name="engines")
