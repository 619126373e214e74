"""Running a matrix: parse, plan, one isolated cell per (model, pipeline, batch size, threads), rows on disk."""
