"""Versioned schema migrations, one list per dialect. Append new versions; never edit old ones."""

from __future__ import annotations

SQLITE: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE ledger_entries (
            log  TEXT    NOT NULL,
            seq  INTEGER NOT NULL,
            hash BLOB    NOT NULL,
            body BLOB    NOT NULL,
            PRIMARY KEY (log, seq)
        ) WITHOUT ROWID;
        CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
        CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
        CREATE TABLE ledger_checkpoints (
            log       TEXT    NOT NULL,
            tree_size INTEGER NOT NULL,
            root      BLOB    NOT NULL,
            timestamp INTEGER NOT NULL,
            note      TEXT    NOT NULL,
            PRIMARY KEY (log, tree_size)
        );
        CREATE TABLE ledger_anchors (
            log       TEXT    NOT NULL,
            tree_size INTEGER NOT NULL,
            record    TEXT    NOT NULL,
            PRIMARY KEY (log, tree_size)
        );
    """,
    ),
    (
        2,
        """
        CREATE TRIGGER ledger_checkpoints_no_update BEFORE UPDATE ON ledger_checkpoints
            BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are append-only'); END;
        CREATE TRIGGER ledger_checkpoints_no_delete BEFORE DELETE ON ledger_checkpoints
            BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are append-only'); END;
    """,
    ),
]

POSTGRES: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE ledger_entries (
            log  TEXT   NOT NULL,
            seq  BIGINT NOT NULL,
            hash BYTEA  NOT NULL,
            body BYTEA  NOT NULL,
            PRIMARY KEY (log, seq)
        );
        CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'ledger entries are append-only'; END $$;
        CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
            FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
        CREATE TABLE ledger_checkpoints (
            log       TEXT    NOT NULL,
            tree_size BIGINT  NOT NULL,
            root      BYTEA   NOT NULL,
            timestamp BIGINT  NOT NULL,
            note      TEXT    NOT NULL,
            PRIMARY KEY (log, tree_size)
        );
        CREATE TABLE ledger_anchors (
            log       TEXT   NOT NULL,
            tree_size BIGINT NOT NULL,
            record    TEXT   NOT NULL,
            PRIMARY KEY (log, tree_size)
        );
    """,
    ),
    (
        2,
        """
        CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
            FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
        CREATE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoints
            FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
        CREATE TRIGGER ledger_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_checkpoints
            FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
    """,
    ),
]
