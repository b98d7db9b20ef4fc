"""Organisations' plans, quotas and usage: what an organisation may do and what it has used.

``service.enforce_quota`` is called when a job is created (402 ``quota_exceeded``);
``service.usage_report`` backs ``GET /v1/usage``; ``service.rate_limit_policy`` gives the API's
rate limiter the organisation's per-minute budgets.
"""
