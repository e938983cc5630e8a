"""Operations: maintenance (small files, snapshot expiry, orphans), status and metrics."""
