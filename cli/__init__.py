"""The ``conveyor`` command line: run the platform's processes and talk to its API."""
