"""The engine layer: the only modules that touch pyiceberg, DuckDB and nats-py internals.

`iceberg` (data files, the watermarked append, the atomic partition replacement, partition keys,
bounds decoding), `duck` (DuckDB connections, SQL quoting, paths DuckDB can open), `nats`
(connections, streams, consumers, the pull path). The stages above (ingest, silver, timetravel,
schema, ops, load) talk to dependencies' internals only through this package.

Private members of dependencies kept here, each with its guard test in
`tests/engine/test_guards.py` (a version check plus a behaviour check):

- `pyiceberg.io.pyarrow._dataframe_to_data_files` (`iceberg.write_data_files`): writes sorted
  Arrow rows as data files without committing. Guard: `test_dataframe_to_data_files_guard`.
- `pyiceberg.io.pyarrow._get_parquet_writer_kwargs` (`iceberg.parquet_writer_kwargs`): the
  table's Parquet writer options for Silver's streaming writer.
  Guard: `test_parquet_writer_kwargs_guard`.
- `pyiceberg.partitioning.PartitionKey.partition` overridden by `iceberg.RecordPartitionKey`
  (a key from an already transformed partition tuple; relies on `to_path()` reading it).
  Guard: `test_record_partition_key_guard`.

`test_engine_docstring_lists_every_private_member` fails when an engine module imports or
reads another library's private member that this list does not name.
"""
