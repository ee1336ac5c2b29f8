-- Tables of the PostgreSQL baselines of scripts/bench (database eventsd_bench):
-- an event store the classic way (one table of events, unique per stream and
-- version, a global position) and a read model shaped like eventsd's `todos`.
-- psql -v rows=N: the read model starts with N todos whose ids are
-- md5('todo' || k)::uuid for k in 1..N, so pgbench scripts can address them.
DROP TABLE IF EXISTS bench_events, bench_todos;
CREATE TABLE bench_events (
  position bigserial PRIMARY KEY,
  event_id uuid NOT NULL UNIQUE,
  stream text NOT NULL,
  version bigint NOT NULL,
  type text NOT NULL,
  data jsonb NOT NULL,
  occurred_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (stream, version)
);
CREATE TABLE bench_todos (
  id uuid PRIMARY KEY,
  description text,
  status text,
  version bigint NOT NULL,
  created_position bigint NOT NULL
);
CREATE INDEX bench_todos_created_idx ON bench_todos (created_position);
CREATE INDEX bench_todos_status_idx ON bench_todos (status, created_position);
INSERT INTO bench_todos (id, description, status, version, created_position)
  SELECT md5('todo' || k)::uuid, 'benchmark todo ' || k, 'Created', 1, k
  FROM generate_series(1, :rows) AS k;
VACUUM ANALYZE bench_todos;
