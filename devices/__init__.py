"""hilprune devices layer (see DESIGN.md §2)."""
