"""Files that appear whole or not at all, and the locks that keep two writers apart."""
