-- sharevault's records: every table of the store in one, keyed by the table's number and the
-- key encoded so that bytea order is the store's key order. Values are sealed envelopes.
CREATE TABLE sharevault_records (
    tbl smallint NOT NULL,
    k bytea NOT NULL,
    v bytea NOT NULL,
    PRIMARY KEY (tbl, k)
);
