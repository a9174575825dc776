"""Driver-side run reports (HTML, PNG, terminal); no torch here."""
