"""Billing: metered usage events, prices, credits and invoices.

``service.period_totals`` / ``service.credits_balance`` answer "what did an organisation use and
what does it cost"; ``metering.record_job_usage`` writes a finished job's usage events in the
transaction that ended it; ``service.check_credits`` refuses work at submit time (402);
``invoices.close_period`` closes a month into one invoice per organisation.
"""
