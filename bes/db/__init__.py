"""Persistence: the database connection, schema, migrations and group commit.

SQLite (WAL) is the embedded default and PostgreSQL serves several replicas; every statement
here runs on both. Nothing above this package sees SQLAlchemy exceptions: they become
:class:`~bes.errors.StoreError`.
"""
