"""Write-behind for hot counters: views and last-seen stamps buffered in the state Redis, flushed in
batches by Celery beat, exactly once (see flush.py)."""
