"""Dataset readers, generators (same file formats) and preprocessing fitted on training data only."""
