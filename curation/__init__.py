"""Curation: the catalog (SQL), lyric filters, the review queue and the Parquet snapshots."""
