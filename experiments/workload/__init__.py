"""A user's own training job as a matrix variant: its tables, ranks, launcher and outcome."""
