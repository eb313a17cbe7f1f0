"""The scheduler service: public API, submission, virtual queue, dispatch."""
