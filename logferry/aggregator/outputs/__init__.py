"""Where the aggregator's spooled documents go: a store (bulk), files, or nowhere (null)."""
