"""What monitor-region watches, what it remembers between runs, and whom it alerts."""
