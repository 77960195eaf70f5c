-- The sign-in throttle's failures, one row per failed sign-in from a source address, so a
-- restart (or a second process on the same data directory) does not reset it. Rows older
-- than the throttle's window are deleted by the next failure.
CREATE TABLE login_failures (
    address TEXT NOT NULL,
    failed_at REAL NOT NULL
);

CREATE INDEX login_failures_address ON login_failures (address, failed_at);

CREATE INDEX login_failures_at ON login_failures (failed_at)
