"""The catalog (SQLAlchemy, SQLite by default), the content-addressed artifact store and builds."""
