"""Media inputs named by URL: guarded fetching."""
