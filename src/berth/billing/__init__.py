"""Billing: plans, metering, the ledger, rating, invoices, arrears and outgoing webhooks.

Every module here is pure (DESIGN.md principle 4): no store, no engine, no network, no wall clock.
Time is always an argument. See README.md in this folder for the words and the flow.
"""
