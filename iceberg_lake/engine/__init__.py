"""The engine layer: the only modules that touch pyiceberg, DuckDB and nats-py internals.

`iceberg` (data files, the watermarked append, the atomic partition replacement, partition keys,
bounds decoding), `duck` (DuckDB connections, SQL quoting, paths DuckDB can open), `nats`
(connections, streams, consumers, the pull path), `nats_tail` (ephemeral ordered consumers for
the live tail; the delivery's ack subject parsed for its sequence, time and pending count,
guarded by `test_guard_ack_subject_fields_match_nats_py_metadata` in
`tests/timetravel/test_live.py`; the nats-py private members listed below), `dbn`
(databento-dbn record layouts, for `lake load`), `filters` (typed row filters), `spark`. The
stages above (ingest, silver, timetravel, schema, ops, load) talk to dependencies' internals only
through this package.

The pull path itself is `nats_pull` (raw `CONSUMER.MSG.NEXT` requests and the status replies
that end them, on public nats-py APIs; exercised against a real server in `tests/test_bus.py`;
the `409 Consumer Deleted` / `503` replies that mean the consumer is gone, read under nats-py's
`Header.DESCRIPTION`, guarded by `tests/engine/test_nats_errors.py`). On the writers' paths
(fetch, consumer reset and state, leases) NATS failures leave the engine as `BusUnavailableError`
(`nats.bus_errors`), not as nats-py's exceptions;
`iceberg` also reads planned files and metadata files and lists and deletes warehouse files
(`read_scan_tasks`, `read_table_metadata`, `listing_io`/`list_files`/`delete_file`).

Private members of dependencies kept here, each with its guard test in
`tests/engine/test_guards.py` (a version check plus a behaviour check):

- `pyiceberg.io.pyarrow._dataframe_to_data_files` (`iceberg.write_data_files`): writes sorted
  Arrow rows as data files without committing. Guard: `test_dataframe_to_data_files_guard`.
- `pyiceberg.io.pyarrow._get_parquet_writer_kwargs` (`iceberg.parquet_writer_kwargs`): the
  table's Parquet writer options for Silver's streaming writer (`iceberg.PartitionFileWriter`,
  which describes its files with pyiceberg's write helpers; compared with pyiceberg's own files
  in `tests/engine/test_partition_file_writer_guard.py`) and the writers' own data path
  (`iceberg.write_sorted_data_files`, which also uses `Transaction._append_snapshot_producer`;
  compared with pyiceberg's own files in `tests/engine/test_iceberg_write_guard.py`).
  Guard: `test_parquet_writer_kwargs_guard`.
- `pyiceberg.avro.file.AvroFile.__enter__` replaced by `iceberg._avro_enter` (the same steps,
  with the file schema's conversion and reader resolved once per schema text; it calls
  `AvroFile._read_header` and reads the header key `_SCHEMA_KEY`). Guard, with a hash of each
  and the entries compared with pyiceberg's own method:
  `tests/engine/test_iceberg_plan_guard.py`.
- `pyiceberg.partitioning.PartitionKey.partition` overridden by `iceberg.RecordPartitionKey`
  (a key from an already transformed partition tuple; relies on `to_path()` reading it).
  Guard: `test_record_partition_key_guard`.

The commit-path fixes of issue 13 (`iceberg.install_commit_fixes`, `WatermarkedAppend`,
`rewrite_manifests`) rely on pyiceberg internals, all guarded in
`tests/engine/test_iceberg_commit_guard.py` (version, a hash of each function's source, and the
behaviour): `_FastAppendFiles` (and `_existing_manifests`), `_ManifestMergeManager` (and
`_create_manifest`, `merge_manifests`), `_MergeAppendFiles` (`_merge_enabled`,
`_min_count_to_merge`), `_SnapshotProducer._manifests`, `update_table_metadata` with
`_apply_table_update`, `_update_table_metadata_log` and `_TableMetadataUpdateContext`,
`MetastoreCatalog._update_and_stage_table`, `Catalog._write_metadata`,
`Transaction._append_snapshot_producer` (overridden by `_FastAppendTransaction`),
`Table._do_commit`; `Transaction._table` and `Transaction._updates` (read by
`_FastAppendTransaction.table_metadata`, whose source is hashed as `Transaction.table_metadata`),
`_SnapshotProducer._process_manifests` (the hook `_BoundedAppendFiles` overrides;
`_SnapshotProducer._manifests` calls it) and `_SnapshotProducer._snapshot_id` (the snapshot being
produced, excluded from a fold).
The compaction's files-only replacement (`iceberg.PartitionReplacement` with
`validation="files"`, used by `compact-files` after a lost race) subclasses `_OverwriteFiles` as
`_NamedFilesOverwrite`, overriding `_SnapshotProducer._validate_concurrency` (the check pyiceberg
runs on its own commit retry) to keep only `_validate_data_files_exist` and
`_validate_no_new_deletes_for_data_files`, reading the producer's `_commit_window`,
`_deleted_data_files` and `_transaction` (`Transaction._table`); guarded, with the behaviour
(late files kept through the retry, replaced files conflict) and a hash of each function relied
on, in `tests/engine/test_iceberg_replace_guard.py`.
`Transaction._stage` (`iceberg.require_properties`, the fencing compare-and-swap of the writers'
watermark and of Silver's incremental mark: the only way to add a commit requirement): source
hashed in the same file, behaviour in `tests/test_engine_fencing.py`.
`MetastoreCatalog._resolve_table_location` (`iceberg.default_table_location`: where a new table
would go, so `lake init` can refuse one whose location already holds a table's metadata), guarded
by `tests/engine/test_table_location_guard.py`.

nats-py (version checked in `tests/engine/test_nats_guard.py`): `Client._send_command`
(`nats.publish_frames`, one write for a batch of publish frames while replaying to NATS), guarded
by `tests/test_replay_nats_batch.py`; `JetStreamContext._api_request`, `_prefix` and `_timeout`
(`nats_tail._stream_info`: `STREAM.INFO` with `deleted_details`, which nats-py's `stream_info`
cannot ask for), guarded by `tests/engine/test_nats_guard.py` and
`test_guard_stream_state_and_follower_skips` in `tests/timetravel/test_live.py`.

databento-dbn: the record classes' `_dtypes`, `_price_fields`, `_timestamp_fields` and
`_hidden_fields` (`dbn`, columnar decoding for `lake load`), guarded by
`tests/engine/test_dbn_guard.py`. pyspark: `SparkContext._gateway` and `SparkContext._jvm`
(`spark.stop_spark` stops the JVM it launched), guarded in `tests/test_spark.py`.

`test_engine_docstring_lists_every_private_member` (every module of this package) fails when an
engine module imports, reads, writes or overrides another library's private member that this
list does not name (whole names).
"""
