"""Staff dashboards in the Django admin: system overview, circuit breakers, rate limits.

`panels` gathers the figures (each panel degrades to "unavailable: <error>" on its own), `history`
keeps a short series of samples in the state Redis for sparklines, `views` renders them, `urls`
hooks the views into the admin site (see resilience/admin.py) and `audit` writes the admin log.
"""
