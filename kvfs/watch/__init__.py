"""``kvfs watch``: validate and reload a service on every host when a watched tree changes."""
