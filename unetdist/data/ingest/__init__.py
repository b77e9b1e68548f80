"""Raw dataset -> verified webdataset shards: layouts, readers, checks, writer, synth."""
