"""hilprune harness layer (see DESIGN.md §2)."""
