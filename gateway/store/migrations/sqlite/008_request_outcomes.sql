-- Requests by outcome per UTC hour (admin API: /v1/stats/outcomes), added to by every
-- replica's usage flush; one row per (hour, outcome).
CREATE TABLE request_outcomes (
    hour    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (hour, outcome)
);
