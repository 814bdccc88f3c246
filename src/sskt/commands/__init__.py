"""Commands contributed by sub-packages: importing this module registers them with the CLI."""
