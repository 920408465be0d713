"""patchkit: keep hardware ports of ML models alive while their upstreams move."""

__version__ = "0.1.0"
