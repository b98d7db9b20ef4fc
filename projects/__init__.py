"""App projects: deploy applications from a git repository or an image."""
