"""Protocol and language logic with no I/O: pure functions and frozen values."""
