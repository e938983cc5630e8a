"""Time travel: queries by table name, the spec's readers, snapshots and tags, pinned replay."""
