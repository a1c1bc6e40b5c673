"""The benchmark tool: command line, run configuration, runner, results store and report."""
