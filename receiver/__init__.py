"""The receiver service: takes completions from algorithm containers."""
