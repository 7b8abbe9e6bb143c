"""hilprune agent layer (see DESIGN.md §2)."""
