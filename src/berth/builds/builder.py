"""Kept for importers of the old module: the build events now live in berth.builds.protocol."""

from __future__ import annotations

from berth.builds.protocol import BuildEvent, BuildEventKind

__all__ = ["BuildEvent", "BuildEventKind"]
