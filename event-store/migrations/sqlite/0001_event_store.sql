-- The embedded event store. One writer connection appends; readers never block it (WAL).

-- One row per stream name ever used, including streams that only have metadata or a tombstone.
CREATE TABLE streams (
    stream_id         INTEGER PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    -- Revision of the last event ever appended; NULL until the first append. Kept through a
    -- soft delete so revisions continue when the stream is recreated.
    last_revision     INTEGER,
    -- 1 from a soft delete until the next append: the stream counts as absent.
    deleted           INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    -- Revisions below this were soft-deleted and stay hidden from stream reads.
    deleted_before    INTEGER NOT NULL DEFAULT 0,
    -- 1 once tombstoned: never readable or writable again.
    tombstoned        INTEGER NOT NULL DEFAULT 0 CHECK (tombstoned IN (0, 1)),
    -- Stream metadata in EventStoreDB's JSON form, and its own revision (NULL: never set).
    metadata          TEXT,
    metadata_revision INTEGER
) STRICT;

-- Every event ever appended. Soft deletes and tombstones hide events from stream reads but keep
-- them here, so `$all` is immutable history for the relay and projections.
CREATE TABLE events (
    -- The `$all` position: 1, 2, 3, … without gaps, assigned inside the write transaction.
    position     INTEGER PRIMARY KEY,
    stream_id    INTEGER NOT NULL REFERENCES streams (stream_id),
    revision     INTEGER NOT NULL,
    -- A UUID as 16 bytes; unique across the store so the relay can deduplicate on it.
    event_id     BLOB    NOT NULL UNIQUE,
    event_type   TEXT    NOT NULL,
    -- 0: JSON, 1: protobuf.
    content_type INTEGER NOT NULL CHECK (content_type IN (0, 1)),
    data         BLOB    NOT NULL,
    metadata     BLOB    NOT NULL,
    -- Microseconds since the Unix epoch, UTC (PostgreSQL's precision, so backends agree).
    created      INTEGER NOT NULL,
    UNIQUE (stream_id, revision)
) STRICT;
