"""Raw datasets, shards, staging and the streaming pipeline."""
