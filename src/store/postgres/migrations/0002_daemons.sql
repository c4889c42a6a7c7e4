-- The daemons serving this database: each refreshes its row (its heartbeat) every half
-- second and removes it when it stops. A rotation of the master key waits for every live
-- daemon to hold the new key; a restore or a migration is refused while any is live.
CREATE TABLE sharevault_daemons (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now(),
    primary_key text NOT NULL,
    held_keys text NOT NULL
);
