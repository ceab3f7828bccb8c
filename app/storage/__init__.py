"""ClickHouse storage: the client layer (``clickhouse``) and the migration runner (``migrate``).

The same code and SQL serve a ClickHouse server or cluster (``http(s)://`` DSN)
and the in-process engine used in development and tests (``chdb:///abs/path``).
Every error raised here is a ``StorageError`` whose ``retriable`` attribute
says whether trying again may help.
"""
