"""Config files: reading them, the resolved copy a run saves, checking every field, finding
the paper's configs from any directory."""
