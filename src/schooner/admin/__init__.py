"""The head's admin HTTP API: Ray dashboard's Serve REST routes plus Schooner's own."""
