"""Berth: a self-hosted, multi-tenant container hosting platform."""

__version__ = "0.1.0"
