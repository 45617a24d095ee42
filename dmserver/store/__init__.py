"""Database models and access (SQLAlchemy), run off the reactor thread."""
