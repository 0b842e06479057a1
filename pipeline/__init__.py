"""Everything that runs: config, data, the condensation engine, evaluation, outputs, the CLI."""
