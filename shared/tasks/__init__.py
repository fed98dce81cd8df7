"""Built-in tasks whose problems are generated, not downloaded (see `shared.tasks.arithmetic`)."""
