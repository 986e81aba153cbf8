"""The Arrow schemas of an imported dataset: the one contract between import and readers."""

from __future__ import annotations

import pyarrow as pa

from raydr.errors import RaydrError

# Bumped when a table's layout changes; readers refuse other versions (re-import instead).
SCHEMA_VERSION = 1

CORPUS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),  # "" when the source has none
        pa.field("text", pa.string(), nullable=False),
    ]
)
QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)
QRELS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("relevance", pa.int32(), nullable=False),
    ]
)


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, or raise naming the bad column.

    Extra columns are dropped; a missing column, another type or nulls are errors.
    """
    for field in schema:
        if field.name not in table.column_names:
            raise RaydrError(f"{where}: missing column {field.name!r} (expected {field.type})")
        column = table.column(field.name)
        if column.type != field.type:
            raise RaydrError(
                f"{where}: column {field.name!r} has type {column.type}, expected {field.type}"
            )
        if not field.nullable and column.null_count:
            raise RaydrError(f"{where}: column {field.name!r} has {column.null_count} null(s)")
    return table.select(schema.names).cast(schema)
