"""Alert rules: conditions over usage, budget, deployments, job error rates and queue backlogs,
evaluated by beat and on events, notified once per transition by webhook and e-mail."""
