"""MedSearch client: the gateway's public API from Python, and the `medsearch` command."""

from medsearch_client.client import GatewayClient, GatewayError, Indexed, RetryPolicy

__all__ = ["GatewayClient", "GatewayError", "Indexed", "RetryPolicy"]
