-- The PostgreSQL event store. Names are unqualified: every connection of a store sets its
-- search_path to the store's schema, so one database holds many isolated stores (tenants, tests).

-- One row per stream name ever written, including streams that only have metadata or a
-- tombstone. Writers change a row only if its version is the one they read (compare-and-set),
-- so writers of one stream in different processes cannot overwrite each other, and writers of
-- different streams never wait for each other.
CREATE TABLE streams (
    name              text    COLLATE "C" PRIMARY KEY,
    -- Incremented by every change: the writers' compare-and-set token.
    version           bigint  NOT NULL DEFAULT 0,
    -- Revision of the last event ever appended; NULL until the first append. Kept through a
    -- soft delete so revisions continue when the stream is recreated.
    last_revision     bigint,
    -- True from a soft delete until the next append: the stream counts as absent.
    deleted           boolean NOT NULL DEFAULT false,
    -- Revisions below this were soft-deleted and stay hidden from stream reads.
    deleted_before    bigint  NOT NULL DEFAULT 0,
    -- True once tombstoned: never readable or writable again.
    tombstoned        boolean NOT NULL DEFAULT false,
    -- Stream metadata in EventStoreDB's JSON form (text, not jsonb, so it round-trips byte for
    -- byte), and its own revision (NULL: never set).
    metadata          text,
    metadata_revision bigint
);

-- Orders events inside one transaction. Not a counter anyone waits on: nextval is
-- non-transactional, so concurrent writers take values without blocking each other.
CREATE SEQUENCE events_seq AS bigint;

-- Every event ever appended. Soft deletes and tombstones hide events from stream reads but keep
-- them here, so `$all` is immutable history for the relay and projections.
CREATE TABLE events (
    -- The writing transaction (pg_current_xact_id()) and the event's sequence value: together
    -- its `$all` position. Readers only expose transactions below their snapshot's xmin, all of
    -- which have ended, so a transaction that commits late can never be skipped.
    transaction_id xid8        NOT NULL,
    seq            bigint      NOT NULL,
    -- The stream's name, as EventStoreDB keeps it with every event: `$all` reads and filters
    -- need no join.
    stream         text        COLLATE "C" NOT NULL,
    revision       bigint      NOT NULL,
    -- Unique across the store, so retries are recognised and the relay can deduplicate on it.
    event_id       uuid        NOT NULL UNIQUE,
    event_type     text        COLLATE "C" NOT NULL,
    -- 0: JSON, 1: protobuf.
    content_type   smallint    NOT NULL CHECK (content_type IN (0, 1)),
    data           bytea       NOT NULL,
    metadata       bytea       NOT NULL,
    created        timestamptz NOT NULL,
    PRIMARY KEY (transaction_id, seq),
    UNIQUE (stream, revision)
);

-- Ends a writer's statement when fewer stream rows were written than decided: another process
-- changed one of them since it was read. The statement rolls back whole, and the writer reads
-- again and decides again.
CREATE FUNCTION check_streams_written(expected bigint, written bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF written <> expected THEN
        RAISE EXCEPTION 'a stream changed while its append was decided (% of % rows written)',
            written, expected
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN written;
END
$$;
