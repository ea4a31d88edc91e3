"""What the operator configures: the TOML file, read and checked before anything starts."""
