"""accelbench harness: data, training, measurement, runner, results, reports, CLI."""
