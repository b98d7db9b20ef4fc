"""Assistants: hosted chat instances on a served model, their conversations, incoming webhooks
and logs. Replies run on the ``inference`` queue (``assistants.jobs``) or, for a model deployment,
through the deployment proxy."""
