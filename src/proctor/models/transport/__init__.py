"""How a replica's calls travel: an HTTP request each, or a proctor server's job channel."""
