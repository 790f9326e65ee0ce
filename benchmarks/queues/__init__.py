"""One module per queue: its no-op job, its producer, and in ``specs`` how its worker starts."""
