"""Every view of the model: hop tables, summary, live grid, path, follow's header, progress, the
lab, JSON and pcapng; the registry of --output formats (outputs). Views import only the model."""
