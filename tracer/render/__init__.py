"""Every view of the model: hop tables, summary, live grid, path, header, progress, JSON, pcapng."""
