"""Reports and plots (matplotlib, Jinja2)."""
