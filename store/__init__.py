"""The job store: SQLAlchemy models, sessions, migrations and the job/key repositories."""
