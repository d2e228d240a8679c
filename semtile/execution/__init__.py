"""How a run is executed: locally in one process (streaming batches); on a cluster later."""
