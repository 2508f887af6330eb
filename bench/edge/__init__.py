"""Prototype drivers for the edge benchmark (bench/edge_candidates.py): one per candidate proxy.

Standalone on purpose: nothing here imports berth.proxy (the measurement decides what that
package becomes).
"""
