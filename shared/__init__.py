"""Code every vineppo service imports: schemas, settings, step segmentation, datasets, prompts."""
