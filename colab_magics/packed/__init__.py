"""The packed dataset format: manifest, tar parts written and read, and the incremental upload."""
