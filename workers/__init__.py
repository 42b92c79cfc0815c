"""Worker processes: thin entry points around ``cdp.pipeline.worker.Worker``."""
