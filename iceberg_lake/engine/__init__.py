"""The engine layer: the only modules that touch pyiceberg, DuckDB and nats-py internals.

`iceberg` (data files, the watermarked append, the atomic partition replacement, bounds, sort
order), `duck` (DuckDB connections and SQL), `nats` (connections, streams, consumers, the pull
path), `dbn` (databento-dbn record layouts, for `lake load`). Every private member of a
dependency used here is listed in its module with a guard test in `tests/engine/`. The stages
above (ingest, silver, timetravel, schema, ops, load) talk to dependencies only through this
package.
"""
