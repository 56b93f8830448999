"""Models that pre-label items: built-in ones that run offline in the worker, and model servers
reached over HTTP. Everything here is plain code with no database: the pre-label job
(labeling/jobs.py) reads items, calls a Predictor on batches and writes predictions."""
