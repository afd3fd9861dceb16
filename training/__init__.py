"""Ground floor: datasets, models, the distributed engine, task recipes, the checkpoint contract and export."""
