"""Loupe's client for ML engineers: released datasets from a Loupe server, in training formats.

`from loupe_client import Client` (the Python API) or `loupe pull` (the command). Needs only
`requests` and `tqdm`: it never imports Django or Loupe's server code.
"""

from loupe_client.api import FORMATS, Client, Pulled
from loupe_client.errors import ApiError, ChecksumMismatch, DownloadError, LinkExpired, LoupeError, UnsafePath

__all__ = [
    "FORMATS",
    "ApiError",
    "ChecksumMismatch",
    "Client",
    "DownloadError",
    "LinkExpired",
    "LoupeError",
    "Pulled",
    "UnsafePath",
]
