"""The Assets that link the DAGs: a published snapshot triggers training; a trained model follows."""

from airflow.sdk import Asset

SNAPSHOT = Asset("image2song_snapshot")
MODEL = Asset("image2song_model")
