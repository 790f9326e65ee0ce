"""bananas-data: a bananas plugin whose ``process_data`` handler aggregates a list of records."""

from bananas_data.aggregate import aggregate
from bananas_data.handler import process_data
from bananas_data.payload import DataPayload, parse_payload
from bananas_data.settings import DataSettings, load_data_settings

__all__ = [
    "DataPayload",
    "DataSettings",
    "aggregate",
    "load_data_settings",
    "parse_payload",
    "process_data",
]
