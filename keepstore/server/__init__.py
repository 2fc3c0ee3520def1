"""``keep serve``: a Keep-protocol server for one machine."""
